"""The package's layers, enforced: who may import whom, and what reading a sweep costs.

    core   pure numbers            imports nothing of telescope's but itself
    spec   TOML -> typed objects    core
    store  the sweep directory     core
    state  replay                  core, spec, store
    train  torch                   core
    read   status/export/report    core, spec, store, state
    run    Ray, Optuna             core, spec, store, state, train
    api    the front door          core, spec, store, state (run and read inside its verbs)

A module-level import that crosses a boundary fails `test_layers_import_only_what_is_below_them`;
torch, Ray or Optuna reaching the read path (even through a sibling) fails the subprocess tests.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sweep_helpers import ROOT, run_cli, write_spec

PACKAGE = ROOT / "telescope"
ALLOWED = {
    "core": {"core"},
    "spec": {"core", "spec"},
    "store": {"core", "store"},
    "state": {"core", "spec", "store", "state"},
    "train": {"core", "train"},
    "read": {"core", "spec", "store", "state", "read"},
    "run": {"core", "spec", "store", "state", "train", "run"},
    "api": {"core", "spec", "store", "state"},
}
HEAVY = ("torch", "ray", "optuna")
# Third-party packages each layer may import at module level (numpy/pandas/pyarrow are data, not
# machinery; matplotlib only where figures are drawn).
HEAVY_ALLOWED = {"train": {"torch", "mup"}, "run": {"ray", "optuna"}}


def _layer(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    name = rel.parts[0].removesuffix(".py")
    return name if name in ALLOWED else None


def _module_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import outside a function body (lazy imports are a verb's own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.lineno, child.module))
            visit(child)

    visit(tree)
    return found


def test_layers_import_only_what_is_below_them():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer is None:
            continue
        for line, module in _module_level_imports(path):
            top, _, rest = module.partition(".")
            if top == "telescope" and rest:
                target = rest.split(".")[0]
                if target in ALLOWED and target not in ALLOWED[layer]:
                    crossings.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module}")
            elif top in HEAVY and top not in HEAVY_ALLOWED.get(layer, set()):
                crossings.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module}")
    assert not crossings, "\n".join(crossings)


def test_the_boundary_check_sees_a_crossing(tmp_path):
    """The checker itself: a read module importing the running layer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from telescope.run.controller import run_sweep\nimport torch\n\ndef f():\n    import ray\n")
    assert _module_level_imports(bad) == [(1, "telescope.run.controller"), (2, "torch")]


def _loaded_after(code: str) -> dict:
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("modules", [
    "telescope.core.rule, telescope.core.fits, telescope.core.drift, telescope.core.scaling, telescope.core.flops",
    "telescope.spec.sweep, telescope.spec.plan, telescope.spec.samplers",
    "telescope.store.ledger, telescope.store.directory, telescope.store.lock",
    "telescope.state, telescope.api",
    "telescope.read.status, telescope.read.export, telescope.read.report",
    "telescope.cli",
])
def test_reading_layers_load_neither_torch_ray_nor_optuna(modules):
    loaded = _loaded_after(f"import {modules}")
    assert not any(loaded.values()), loaded


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layers")
    out = tmp / "sweep"
    result = run_cli("run", str(write_spec(tmp, calibration_width=16)), "--out", str(out), "--num-cpus", "2",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["export", "--width", "64"]])
def test_status_and_export_of_a_finished_sweep_never_load_torch_ray_or_optuna(finished_sweep, command):
    code = ("import contextlib, io\nfrom telescope.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main([{command[0]!r}, {str(finished_sweep)!r}, *{command[1:]!r}]) == 0")
    loaded = _loaded_after(code)
    assert not any(loaded.values()), loaded


def test_status_imports_little_beyond_the_data_libraries_it_reads_with():
    """`telescope status` pays for numpy, pandas and pyarrow (it reads Parquet) and little else:
    measured against importing just those, in the same process, so the machine's load cancels
    out. torch alone would add seconds."""
    probe = ("import time; t = time.perf_counter(); import numpy, pandas, pyarrow.parquet, pyarrow.dataset; "
             "floor = time.perf_counter() - t; import telescope.cli, telescope.api, telescope.read.status; "
             "print(floor, time.perf_counter() - t - floor)")
    runs = []
    for _ in range(3):  # the best of three: this machine is shared
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
        runs.append(tuple(map(float, out.stdout.split())))
    floor, extra = min(runs, key=lambda r: r[1])
    assert extra < 0.5, runs
