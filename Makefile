# All set-up happens here: a fresh machine needs only python3 (>= 3.10) with venv.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,ray,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check ruvector_hnsw tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy ruvector_hnsw

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests

test: lint typecheck unit

demo: $(STAMP)
	$(VENV)/bin/ruvector-hnsw demo

bench: $(STAMP)
	$(VENV)/bin/ruvector-hnsw bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
