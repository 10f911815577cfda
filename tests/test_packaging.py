"""Packaging: licence, one version, declared dependencies, the source distribution's extra files."""

from __future__ import annotations

import re
from pathlib import Path

import ruvector_hnsw
from ruvector_hnsw.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def _project_table() -> str:
    return PYPROJECT.split("[project]", 1)[1].split("\n[", 1)[0]


def test_license_file_is_mit_and_declared() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 The ruvector-hnsw developers" in text
    project = _project_table()
    assert re.search(r'^license = "MIT"$', project, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', project, re.M)
    assert "License ::" not in PYPROJECT  # a licence expression excludes licence classifiers


def test_version_lives_in_one_place(capsys) -> None:
    project = _project_table()
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    assert not re.search(r"^version\s*=", project, re.M)
    assert 'version = { attr = "ruvector_hnsw.__version__" }' in PYPROJECT
    assert re.fullmatch(r"\d+\.\d+\.\d+", ruvector_hnsw.__version__)
    holders = [p.relative_to(ROOT).as_posix() for p in [ROOT / "pyproject.toml", ROOT / "README.md",
                                                         *sorted((ROOT / "ruvector_hnsw").rglob("*.py"))]
               if f'"{ruvector_hnsw.__version__}"' in p.read_text(encoding="utf-8")]
    assert holders == ["ruvector_hnsw/__init__.py"]
    assert main(["--version"]) == 0
    assert ruvector_hnsw.__version__ in capsys.readouterr().out


def test_runtime_dependencies() -> None:
    deps = _project_table().split("dependencies = [", 1)[1].split("]", 1)[0]
    declared = re.findall(r'"([^"]+)"', deps)
    assert "hnswlib>=0.8,<0.9" in declared  # the graph export reads hnswlib 0.8's private layout
    assert "threadpoolctl>=3" in declared  # ruvector_hnsw.threads limits BLAS with it
    assert any(d.startswith("faiss-cpu") for d in declared) and any(d.startswith("numba") for d in declared)
    assert not any(d.startswith("ray") for d in declared)  # Ray is the optional extra ``ray``, never required
    extras = PYPROJECT.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^ray = \["ray>=[0-9.]+"\]', extras, re.M)
    assert ".[all,ray,dev]" in (ROOT / "Makefile").read_text(encoding="utf-8")  # make test runs the Ray tests


def test_sdist_carries_the_benchmarks_and_the_licence() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "graft benchmarks" in manifest and "include LICENSE" in manifest
    assert any((ROOT / "benchmarks").glob("bench_*.py"))


def test_tests_skip_only_for_optional_third_party_extras() -> None:
    """A test may skip when an optional extra is missing, never when the project's own import fails."""
    # the import names of the hdf5/plot/progress/digits/ray extras
    extras = {"h5py", "matplotlib", "tqdm", "sklearn", "ray"}
    found = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for name in re.findall(r"importorskip\(\s*['\"]([^'\"]+)['\"]", path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert found, "the scan found no importorskip at all: is it still reading the tests?"
    assert set(found) <= extras, {k: v for k, v in found.items() if k not in extras}
