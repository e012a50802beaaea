"""Small real sweeps for the tests: tiny models on the builtin corpus, a few seconds per level."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


def only_lr_axis(spec: Path, points: int = 3) -> Path:
    """Drop the spec's init_std axis and give lr `points` values: `points` trials a level."""
    text = re.sub(r"\[axes\.init_std\][^\[]*", "", spec.read_text())
    spec.write_text(re.sub(r"(?m)^points = 3$", f"points = {points}", text))
    return spec


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


def rows_at_level(out: Path, level: int) -> int:
    """Rows of `level` committed so far, read while a controller writes and compacts."""
    try:
        trials = raw_trials(out)
    except FileNotFoundError:  # a compaction replaced a part between listing and reading
        return 0
    return int((trials["level"] == level).sum()) if len(trials) else 0


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
    with running(cmd, env=env) as proc:
        wait_until(proc, lambda: committed_parts(out) >= after_parts, f"{after_parts} trials", timeout)
        stop_with(proc, signal.SIGKILL)  # the driver only, as a crash would


@contextlib.contextmanager
def running(cmd: list[str], *, env: dict[str, str] | None = None, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE) -> Iterator[subprocess.Popen]:
    """`cmd` started in a session of its own (so that its Ray's processes can be found and
    stopped together), as text; on leaving, whatever is left of it and its Ray is SIGKILLed."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        with contextlib.suppress(ProcessLookupError):  # whatever Ray left behind in the driver's session
            os.killpg(proc.pid, signal.SIGKILL)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 240, *,
               log: Path | None = None, poll_s: float = 0.05) -> None:
    """Poll `ready()` until it holds; fail, with the command's stderr (its pipe, or the file `log`
    it writes to), if `proc` ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr is not None else log.read_text()[-3000:] if log else ""
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}: {stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(poll_s)


def stop_with(proc: subprocess.Popen, sig: int, *, group: bool = False, timeout: float = 60) -> tuple[str, float]:
    """Send `sig` to the driver (to its whole process group with `group`, as a terminal's Ctrl-C
    or a batch scheduler's preemption does) and wait for it to exit: (its stderr, seconds taken).

    After a SIGKILL the driver's Ray lives on and may hold its stderr open, so that is not read."""
    os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
    signalled = time.monotonic()
    if sig == signal.SIGKILL:
        proc.wait(timeout=timeout)
        return "", time.monotonic() - signalled
    _, stderr = proc.communicate(timeout=timeout)
    return stderr or "", time.monotonic() - signalled


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file below `path` (hidden ones too), by relative path."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }
