"""The package is layered without cycles (DESIGN.md section 1): a lower layer never imports a higher one.

Two independent checks:

* every module's imports are parsed (``ast``, all of them: module level, inside functions, under
  ``TYPE_CHECKING``, literal ``importlib.import_module`` calls) and each one must point to the
  importer's own unit or to a strictly lower layer; no unit imports another unit's private
  modules or names; the low modules use only the third-party packages listed for them;
* each unit is imported alone in a fresh interpreter, and the package modules (and third-party
  packages) that this loads must respect the same order.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ruvector_hnsw"

#: unit -> layer; a module may import its own unit and strictly lower layers only. Units on one
#: layer know nothing of each other (index vs attention, eval vs datasets).
LAYERS: dict[str, int] = {
    "errors": 0,
    "_validation": 1,
    "threads": 1,
    "ranking": 2,
    "latent": 2,
    "index": 3,
    "attention": 3,
    "training": 4,
    "search": 5,
    "eval": 6,
    "datasets": 6,
    "distributed": 7,
    "diagnostics": 7,
    "cli": 8,
}
#: the package face (``ruvector_hnsw/__init__.py``) re-exports lazily from above; its own
#: attributes (``__version__``, ``RuvectorError``) count as the bottom layer
FACE = "<face>"
#: third-party packages the low modules may use (the standard library is always allowed)
ALLOWED_THIRD_PARTY: dict[str, set[str]] = {
    "errors": set(),
    "_validation": {"numpy"},
    "ranking": {"numpy"},
    "threads": {"numpy", "threadpoolctl", "faiss"},
    "latent": {"numpy", "faiss"},
}
#: third-party packages a unit must not touch although its layer would allow it
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {"attention": {"hnswlib"}}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _lazy_exports() -> dict[str, str]:
    """Names the face resolves lazily -> the module they come from (its ``_LAZY`` table)."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            table = ast.literal_eval(node.value)
            assert isinstance(table, dict)
            return table
    raise AssertionError("ruvector_hnsw/__init__.py has no _LAZY table")


LAZY = _lazy_exports()


def unit_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "ruvector_hnsw", module
    return FACE if len(parts) == 1 else parts[1]


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not MODULES[importer].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[int, str, str | None]]:
    """Every import in ``module``: (line, imported module, imported name or None)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            found += [(node.lineno, target, a.name) for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value, None))
    return found


def target_of(target: str, name: str | None) -> tuple[str, str]:
    """The package module an import really reaches, and the unit it belongs to."""
    if name is not None and f"{target}.{name}" in MODULES:  # ``from pkg import submodule``
        target = f"{target}.{name}"
    elif target == "ruvector_hnsw" and name in LAZY:  # a lazy re-export of the face
        target = LAZY[name]
    unit = unit_of(target)
    return target, ("errors" if unit == FACE else unit)


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def violations(module: str) -> list[str]:
    here = unit_of(module)
    if here == FACE:
        return []  # the face re-exports from every layer by design (lazily)
    rank = LAYERS[here]
    out = []
    for line, target, name in imports_of(module):
        top = target.split(".")[0]
        if top != "ruvector_hnsw":
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if here in ALLOWED_THIRD_PARTY and top not in ALLOWED_THIRD_PARTY[here]:
                out.append(f"{module}:{line} imports {top} (the {here} layer may use only "
                           f"{sorted(ALLOWED_THIRD_PARTY[here]) or 'the standard library'})")
            if top in FORBIDDEN_THIRD_PARTY.get(here, ()):
                out.append(f"{module}:{line} imports {top}, which {here} must know nothing of")
            continue
        reached, unit = target_of(target, name)
        if unit == here:
            continue
        stmt = f"from {target} import {name}" if name else f"import {target}"
        if LAYERS[unit] >= rank:
            out.append(f"{module}:{line} `{stmt}`: {unit} (layer {LAYERS[unit]}) is not below {here} (layer {rank})")
        within = reached.split(".")[2:]  # the path inside the imported unit
        if any(_private(p) for p in within) or (name is not None and _private(name)):
            out.append(f"{module}:{line} `{stmt}`: a private part of {unit}")
    return out


def test_every_module_is_in_a_layer() -> None:
    units = {unit_of(m) for m in MODULES} - {FACE}
    assert units == set(LAYERS), f"units without a layer: {sorted(units - set(LAYERS))}"


def test_the_checker_catches_what_it_should() -> None:
    assert target_of("ruvector_hnsw", "HNSWIndex") == ("ruvector_hnsw.index", "index")
    assert target_of("ruvector_hnsw", "__version__") == ("ruvector_hnsw", "errors")
    assert target_of("ruvector_hnsw.eval", "metrics") == ("ruvector_hnsw.eval.metrics", "eval")
    assert target_of("ruvector_hnsw.attention._kernels", "x")[1] == "attention"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    bad = violations(module)
    assert not bad, "\n".join(bad)


def _loaded_by(unit: str) -> list[str]:
    code = ("import json, sys\n"
            f"import ruvector_hnsw.{unit}\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"import ruvector_hnsw.{unit} alone failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("unit", sorted(LAYERS))
def test_each_unit_imports_alone_and_loads_nothing_above_it(unit: str) -> None:
    loaded = _loaded_by(unit)
    rank = LAYERS[unit]
    above = []
    for mod in loaded:
        if mod == "ruvector_hnsw" or not mod.startswith("ruvector_hnsw."):
            continue
        other = unit_of(mod)
        if other != unit and LAYERS[other] >= rank:
            above.append(mod)
    assert not above, f"import ruvector_hnsw.{unit} loads {above}"
    tops = {m.split(".")[0] for m in loaded}
    if unit in ALLOWED_THIRD_PARTY:
        for pkg in ("hnswlib", "numba", "faiss", "sklearn", "h5py", "matplotlib"):
            if pkg not in ALLOWED_THIRD_PARTY[unit]:
                assert pkg not in tops, f"import ruvector_hnsw.{unit} loads {pkg}"
    for pkg in FORBIDDEN_THIRD_PARTY.get(unit, ()):
        assert pkg not in tops, f"import ruvector_hnsw.{unit} loads {pkg}"
