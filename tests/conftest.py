"""Fixtures shared across the test packages. Helpers that are plain functions live in
tests/sweep_helpers.py and tests/cluster_helpers.py (imported as `tests.sweep_helpers`).

The sweeps here are run once per test session and shared read-only: a test that changes a sweep
directory copies it first (shutil.copytree)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

PAPER_RULE = 'max_shifts = 0\ncentre = "previous"'  # no rings after level 0, grids centred on the last optimum


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory) -> Path:
    """One real tiny sweep (widths 16 -> 32 -> 64, a real local Ray), run once per test session
    and shared by the report and notebook tests."""
    from telescope.api import Sweep
    from telescope.run.progress import Progress
    from tests.sweep_helpers import write_spec

    root = tmp_path_factory.mktemp("real-sweep")
    Sweep.create(write_spec(root, calibration_width=64), root / "out").run(num_cpus=2, progress=Progress(quiet=True))
    return root / "out"


@pytest.fixture(scope="session")
def cli_sweep(tmp_path_factory) -> SimpleNamespace:
    """One uninterrupted 3-level sweep (16 -> 32 -> 64) by `telescope run` (progress display on)
    on its private local Ray, under the paper's rule: the yardstick of the resume tests. Holds the
    spec and directory, the command's exit status, stdout and stderr, and the programs and
    listening sockets of its Ray's processes while the trials ran."""
    from tests.cluster_helpers import descendants, listening, program
    from tests.sweep_helpers import committed_parts, running, telescope_cmd, wait_until, write_spec

    tmp = tmp_path_factory.mktemp("cli-sweep")
    spec = write_spec(tmp, calibration_width=64, rule=PAPER_RULE)
    out = tmp / "out"
    stdout, stderr = tmp / "stdout", tmp / "stderr"
    # Files, not pipes: nothing reads the progress display while the sweep runs.
    with open(stdout, "w") as o, open(stderr, "w") as e, \
            running(telescope_cmd("run", str(spec), "--out", str(out), "--num-cpus", "2"), stdout=o, stderr=e) as proc:
        wait_until(proc, lambda: committed_parts(out) >= 1, "a trial recorded", timeout=300, log=stderr)
        tree = descendants(proc.pid)  # trials have run: the workers are up beside GCS and raylet
        sockets = listening([proc.pid, *tree])
        programs = sorted({program(pid) for pid in tree})
        proc.wait(timeout=300)
    done = SimpleNamespace(spec=spec, out=out, returncode=proc.returncode, stdout=stdout.read_text(),
                           stderr=stderr.read_text(), sockets=sockets, programs=programs)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="session")
def diverged_sweep(tmp_path_factory) -> SimpleNamespace:
    """`telescope run --quiet` of a sweep whose learning rates are so high that every trial
    diverges within a few steps, so that level 0 has no optimum: its directory and the command's
    CompletedProcess."""
    from tests.sweep_helpers import run_cli, write_spec

    tmp = tmp_path_factory.mktemp("diverged")
    spec = write_spec(tmp, steps=30)
    text = spec.read_text()
    assert "low = 0.003\nhigh = 0.03" in text
    spec.write_text(text.replace("low = 0.003\nhigh = 0.03", "low = 300.0\nhigh = 3000.0", 1))
    out = tmp / "out"
    return SimpleNamespace(out=out, result=run_cli("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"))
