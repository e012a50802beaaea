"""Fixtures shared across the test packages. Helpers that are plain functions live in
tests/sweep_helpers.py and tests/cluster_helpers.py (imported as `tests.sweep_helpers`)."""

from pathlib import Path

import pytest


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
