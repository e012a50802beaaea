"""notebooks/sweep_analysis.ipynb: stored without outputs, and runs end to end on a real sweep."""

from __future__ import annotations

import re

import nbformat
import pandas as pd
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.sweep_helpers import ROOT
from telescope.state import sweep_state
from telescope.spec.plan import plan

NOTEBOOK = ROOT / "notebooks" / "sweep_analysis.ipynb"
KERNEL = "telescope-test"


def test_the_stored_notebook_has_no_outputs_and_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "TELESCOPE_SWEEP_DIR" in parameters[0].source


@pytest.fixture(scope="module")
def executed(tmp_path_factory, real_sweep):
    """The notebook run on the real sweep, through a kernel of this very interpreter (a
    kernelspec written for the test, so no user-level 'python3' kernel can stand in for it)."""
    sweep = real_sweep
    work = tmp_path_factory.mktemp("notebook")
    write_kernel_spec(work / "kernels" / KERNEL)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(work / "kernels")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TELESCOPE_SWEEP_DIR", str(sweep))
        NotebookClient(nb, km=km, timeout=180, resources={"metadata": {"path": str(work)}}).execute()
    return sweep, nb


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def test_the_notebook_walks_through_the_sweep(executed):
    sweep, nb = executed
    text = _text(nb)
    spec, _, state = sweep_state(sweep)
    point = ", ".join(f"{k}={v:.4g}" for k, v in state.optimum.point.items())
    assert f"optimum at width {state.levels[-1].width}: {point}" in text
    assert f"{len(state.levels)} of {spec.n_levels} levels done" in text
    # figures: muTransfer curves, the level's grid, the drift fits
    images = sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))
    assert images >= 3
    for name in spec.axis_names:
        # the law the optima agree with better, and its limit where it has one
        assert re.search(rf"{name}: x\*\(n\) = (x_inf - alpha/n: x_inf=|c \* n\^alpha: no limit)", text)
    assert "L = " in text and "(the paper: alpha = 0.31)" in text  # three widths: the law is fitted
    spent = float(pd.read_parquet(sweep / "trials.parquet")["flops"].sum())
    final = plan(spec).final_run_flops
    assert f"sweep spent {spent:.4e} FLOPs" in text
    assert f"{final / (spent + final):.1%} of sweep + final" in text
    assert not any(out.output_type == "error" for c in nb.cells for out in c.get("outputs", []))

