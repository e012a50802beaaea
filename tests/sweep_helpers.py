"""Small real sweeps for the tests: tiny models on the builtin corpus, a few seconds per level."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

TINY_SPEC = """\
name = "tiny"
base_width = 16
calibration_width = {calibration_width}
target_width = 256
seeds = {seeds}
min_points = 3
max_widenings = 1
sampler = {sampler}
{rule}

[model]
depth = 1
head_dim = 8

[training]
data = "builtin:stdlib"
seq_len = 32
batch_size = 8
steps = {steps}
eval_interval = 5
eval_batches = 2
device = "cpu"

[axes.lr]
low = 0.003
high = 0.03
scale = "log"
points = 3

[axes.init_std]
low = 0.01
high = 0.04
scale = "log"
points = 3

[resources]
num_cpus = 1
{resources}
"""


def write_spec(tmp_path: Path, name: str = "tiny.toml", *, calibration_width: int = 32, seeds: int = 1,
               sampler: str = '"grid"', steps: int = 10, resources: str = "", rule: str = "") -> Path:
    """`rule`: extra top-level lines, e.g. 'max_shifts = 0\ncentre = "previous"' (the paper's rule)."""
    path = tmp_path / name
    path.write_text(TINY_SPEC.format(calibration_width=calibration_width, seeds=seeds, sampler=sampler,
                                     steps=steps, resources=resources, rule=rule))
    return path


def telescope_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "telescope", *args]


def terminal_cmd(*args: str) -> list[str]:
    """telescope_cmd with Ctrl-C raising KeyboardInterrupt as in a terminal, even when this test
    run was started in the background, where SIGINT arrives ignored and Python keeps it so."""
    boot = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'telescope'; runpy.run_module('telescope', run_name='__main__')")
    return [sys.executable, "-c", boot, *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(telescope_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def raw_trials(out: Path) -> pd.DataFrame:
    """Every row of every committed part, without the ledger's de-duplication."""
    path = out / "trials.parquet"
    if not path.exists() or not any(p.name.startswith("part-") for p in path.iterdir()):
        return pd.DataFrame(columns=["trial_id"])
    return pd.read_parquet(path)


def committed_parts(out: Path) -> int:
    path = out / "trials.parquet"
    return sum(1 for p in path.iterdir() if p.name.startswith("part-")) if path.exists() else 0


def start_and_kill(spec: Path, out: Path, after_parts: int, timeout: float = 240, *,
                   ray_args: tuple[str, ...] = ("--num-cpus", "2"), env: dict[str, str] | None = None) -> None:
    """Start `telescope run`, SIGKILL the controller once `after_parts` trials are committed.

    `ray_args` say where trials run (a private local Ray by default; e.g. ("--address", ADDR)
    for a cluster, whose driver environment goes in `env`)."""
    kill_after(telescope_cmd("run", str(spec), "--out", str(out), *ray_args, "--quiet"), out, after_parts,
               timeout, env=env)


def kill_after(cmd: list[str], out: Path, after_parts: int, timeout: float = 240, *,
               env: dict[str, str] | None = None) -> None:
    """Start `cmd` (a telescope driver writing the ledger in `out`), SIGKILL it once `after_parts`
    trials are committed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while committed_parts(out) < after_parts:
            if proc.poll() is not None:
                raise AssertionError(f"run ended before {after_parts} trials: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {after_parts} trials within {timeout} s")
            time.sleep(0.05)
        os.kill(proc.pid, 9)  # the driver only, as a crash would
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
        try:  # whatever Ray left behind in the driver's session
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file below `path` (hidden ones too), by relative path."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }
