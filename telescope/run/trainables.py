"""Running a sweep's trainable: each trial as a Ray job's function and argument.

`Launcher.for_sweep` decides, once per sweep, how trials reach their code; `Launcher.target`
turns one trial into what the dispatcher runs:

- the built-in GPT: telescope.train.trial.run_trial on the TrialConfig, exactly as before;
- a user's Python function or command: `run_trainable` on a `TrainableTask`, on the worker.

`Launcher.job` makes the dispatcher Job of one trial at its level's resources. A multi-worker
trial ([resources] workers = N > 1) of the built-in GPT or of a Python function is a Ray Train
launcher (telescope.run.distributed) that runs the same function on every one of its N workers,
a Python function as rank `ctx.rank` of `ctx.world_size` with torch.distributed initialised. A
command's trial stays one Ray task, holding N x the per-worker resources on one node; the command
launches its N ranks itself, from the {workers} placeholder (torchrun --nproc-per-node {workers}).

`run_trainable` gives the trial its own directory, DIR/trials/<trial_id>/ under the sweep
directory when the worker sees it (one machine, or a shared filesystem), else a directory under
the worker node's temporary directory. It clears telescope's own files there (a re-run after a
crash starts clean; anything else the trainable keeps, a checkpoint say, it finds again) and
writes context.json. Then:

- python: imports the function (the trainable's working_dir first on sys.path) and calls it with
  the TrialContext. `ctx.report` feeds the curve; a divergence stops the trial as diverged.
- command: fills in the placeholders and runs the command through telescope/run/supervisor.py in
  a new session, so the whole process group dies with the worker (a time limit, Ctrl-C or a
  killed controller), with stdout and stderr in stdout.log and stderr.log of the trial directory.
  While it runs, curve.jsonl is read as it grows: a divergence there kills the group and the
  trial is diverged. Its result is result.json. A non-zero exit (the row's error gives the code
  and the last lines of stderr), a missing or malformed result: a failed trial, never an
  exception, so the sweep goes on.

Remote clusters: with an `--address`, Ray ships the trainable's working_dir to every node (its
runtime environment; .gitignore'd files stay behind) and trials run in that copy. The trial
directories are then each node's own; the ledger still receives every result and curve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telescope.core.contract import TrialConfig, TrialResult
from telescope.core.trainable import (
    CONTEXT_FILE, CURVE_FILE, RESULT_FILE, STDERR_FILE, STDOUT_FILE, TRIAL_FILES, Curve, ResultError,
    Trainable, TrialContext, TrialDiverged, failed_result, import_function, parse_result, placeholder_values,
    render_command,
)
from telescope.run.dispatch import Job
from telescope.run.distributed import DistributedTask, run_distributed
from telescope.spec.resources import Resources

TRIALS_DIR = "trials"  # DIR/trials/<trial_id>/: each trial's own directory
SUPERVISOR = Path(__file__).with_name("supervisor.py")
POLL_S = 0.1  # how often a running command's curve is read
STDERR_LINES = 5  # lines of a failed command's stderr its ledger row keeps
_STDERR_TAIL_BYTES = 16384
_LINE_CHARS = 200  # of each stderr line kept


@dataclass(frozen=True)
class TrainableTask:
    """One trial of a user's trainable, as shipped to a Ray worker."""

    trainable: Trainable
    trial_id: str
    config: TrialConfig
    point: dict[str, float]
    trial_root: str  # the sweep's DIR/trials, as the controller sees it
    code_dir: str | None  # the trainable's working_dir, absolute; None: Ray shipped it (the worker's cwd)
    workers: int = 1  # the ranks a command launches itself ({workers})


@dataclass(frozen=True)
class Launcher:
    """How one sweep's trials become jobs. `runtime_env` is what the dispatcher passes to Ray."""

    trainable: Trainable
    trial_root: Path | None = None  # DIR/trials; for the built-in GPT only made once a trial needs it
    code_dir: str | None = None
    runtime_env: dict[str, Any] | None = None

    @classmethod
    def for_sweep(cls, trainable: Trainable, sweep_dir: str | Path, address: str | None) -> "Launcher":
        """Creates DIR/trials/ for a user's trainable. On a private local Ray the workers share
        this filesystem; on a cluster (`address`) Ray ships the working directory."""
        root = Path(sweep_dir).resolve() / TRIALS_DIR
        if trainable.builtin:
            return cls(trainable, root)
        root.mkdir(exist_ok=True)
        code = Path(trainable.working_dir).resolve()
        if address is None:
            return cls(trainable, root, str(code))
        env: dict[str, Any] = {"working_dir": str(code)}
        if root.is_relative_to(code):  # the sweep directory itself need not travel
            env["excludes"] = [f"/{root.parent.relative_to(code).as_posix()}/"]
        return cls(trainable, root, None, env)

    def target(self, trial_id: str, config: TrialConfig, point: dict[str, float], *,
               workers: int = 1) -> tuple[Callable[[Any], Any], Any]:
        """The function and argument of one trial on one worker (a command: launching `workers` ranks)."""
        if self.trainable.builtin:
            from telescope.train.trial import run_trial  # torch: only the built-in GPT needs it

            return run_trial, config
        assert self.trial_root is not None
        return run_trainable, TrainableTask(self.trainable, trial_id, config, dict(point), str(self.trial_root),
                                            self.code_dir, workers)

    def job(self, trial_id: str, config: TrialConfig, point: dict[str, float], resources: Resources, *,
            time_limit_s: float | None, max_retries: int) -> Job:
        """One trial's dispatcher Job at `resources` (see the module docstring)."""
        workers = resources.workers
        if workers == 1:
            return Job(trial_id, *self.target(trial_id, config, point), resources, time_limit_s)
        if self.trainable.kind == "command":
            fn, arg = self.target(trial_id, config, point, workers=workers)
            return Job(trial_id, fn, arg, _one_task_for(resources), time_limit_s)
        if self.trainable.builtin:
            config.micro_batches(workers)  # ConfigError now, not on every rank of every retry
        _, arg = self.target(trial_id, config, point)
        assert self.trial_root is not None
        task = DistributedTask(trial_id, arg, workers, resources, max_retries, str(self.trial_root))
        return Job(trial_id, run_distributed, task, resources, time_limit_s)


def _one_task_for(resources: Resources) -> Resources:
    """What a command trial's one task holds: all its workers' resources, on one node (whole GPUs:
    Resources refuses fractions for several workers)."""
    n = resources.workers
    return Resources(round(resources.num_cpus * n, 4), resources.num_gpus * n)


def run_trainable(task: TrainableTask, *, rank: int = 0, local_rank: int = 0, world_size: int | None = None) -> TrialResult:
    """Run one trial of a user's trainable on this worker (see the module docstring): as rank
    `rank` of `world_size` (a multi-worker trial's Ray Train worker), or alone. Rank 0 prepares
    the trial directory; the other ranks use it as it is."""
    start = time.perf_counter()
    trial_dir = trial_directory(task.trial_root, task.trial_id, clear=rank == 0)
    code_dir = task.code_dir or os.getcwd()
    ctx = TrialContext.create(task.trial_id, task.config, task.point, task.trainable.settings_dict(), trial_dir,
                              rank=rank, local_rank=local_rank, world_size=world_size or task.workers)
    metrics = task.trainable.metrics
    if not os.path.isdir(code_dir):
        return failed_result(f"trainable.working_dir {code_dir} is not a directory on this node; on a cluster, "
                             "run with --address so that Ray ships it", metrics=metrics)
    if task.trainable.kind == "python":
        if rank == 0:
            _write_context(ctx, None)
        return _run_python(task.trainable, ctx, code_dir, start)
    _write_context(ctx, {"result": str(trial_dir / RESULT_FILE), "curve": str(trial_dir / CURVE_FILE)})
    return _run_command(task.trainable, ctx, code_dir, start)


def _write_context(ctx: TrialContext, files: dict[str, str] | None) -> None:
    text = json.dumps(ctx.to_json(files), indent=2) + "\n"
    (ctx.trial_dir / CONTEXT_FILE).write_text(text, encoding="utf-8")


def trial_directory(root: str, trial_id: str, *, clear: bool = True) -> Path:
    """The trial's own directory (`root` is the sweep's DIR/trials), emptied of telescope's files
    unless `clear` is False: under the sweep directory when this node sees it, else under this
    node's temporary directory."""
    if os.path.isdir(os.path.dirname(root)):
        path = Path(root) / trial_id
    else:
        sweep = hashlib.sha256(root.encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / "telescope-trials" / sweep / trial_id
    path.mkdir(parents=True, exist_ok=True)
    for name in TRIAL_FILES if clear else ():
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    return path


def _run_python(trainable: Trainable, ctx: TrialContext, code_dir: str, start: float) -> TrialResult:
    fn = import_function(trainable.function, code_dir)
    try:
        raw = fn(ctx)
    except TrialDiverged:
        raw = {"status": "diverged"}
    except Exception:
        if ctx.curve.diverged is None:
            raise  # the dispatcher records it as failed, with the function's own traceback
        raw = {"status": "diverged"}  # it broke on the diverged loss it had already reported
    try:
        return parse_result(raw, metrics=trainable.metrics, curve=ctx.curve, wall_time_s=time.perf_counter() - start)
    except ResultError as err:
        return failed_result(f"{trainable.function} returned no result: {err}", metrics=trainable.metrics,
                             wall_time_s=time.perf_counter() - start, curve=ctx.curve)


class _CurveReader:
    """Reads curve.jsonl as the command appends to it: whole lines only, until the end."""

    def __init__(self, path: Path, curve: Curve):
        self.path, self.curve = path, curve
        self.offset, self.line_no, self.partial = 0, 0, b""

    def read(self, final: bool = False) -> str | None:
        """New points into the curve; returns why the trial diverged, if it did. ResultError
        names the line that is not a curve point."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return None
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if final and self.partial.strip():
            lines.append(self.partial)
        for line in lines:
            self.line_no += 1
            if not line.strip():
                continue
            try:
                reason = self.curve.add_line(line.decode("utf-8", errors="replace"))
            except ResultError as err:
                raise ResultError(f"{self.path} line {self.line_no}: {err}") from None
            if reason is not None:
                return reason
        return None


def _run_command(trainable: Trainable, ctx: TrialContext, code_dir: str, start: float) -> TrialResult:
    trial_dir = ctx.trial_dir
    argv = render_command(trainable.command, placeholder_values(ctx, sys.executable))
    env = {**os.environ, "TELESCOPE_TRIAL_ID": ctx.trial_id, "TELESCOPE_TRIAL_DIR": str(trial_dir),
           "TELESCOPE_CONTEXT": str(trial_dir / CONTEXT_FILE), "TELESCOPE_RESULT": str(trial_dir / RESULT_FILE),
           "TELESCOPE_CURVE": str(trial_dir / CURVE_FILE)}
    if ctx.num_threads is not None:  # the CPUs Ray gave the trial, not the worker's inherited count
        env |= {"OMP_NUM_THREADS": str(ctx.num_threads), "MKL_NUM_THREADS": str(ctx.num_threads)}
    reader = _CurveReader(trial_dir / CURVE_FILE, ctx.curve)
    broken: str | None = None
    code: int | None = None
    with open(trial_dir / STDOUT_FILE, "wb") as out, open(trial_dir / STDERR_FILE, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-I", str(SUPERVISOR), str(os.getpid()), "--", *argv],
                                cwd=code_dir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                reader.read(final=True)
                break
            except subprocess.TimeoutExpired:
                pass
            if reader.read() is not None:
                break  # diverged: stop it now rather than let it train on
    except ResultError as bad:
        broken = str(bad)
    finally:
        _kill_group(proc.pid)
        proc.wait()
    elapsed = time.perf_counter() - start
    metrics = trainable.metrics
    if broken is not None:
        return failed_result(broken, metrics=metrics, wall_time_s=elapsed, curve=ctx.curve)
    if ctx.curve.diverged is not None:
        return parse_result({"status": "diverged"}, metrics=metrics, curve=ctx.curve, wall_time_s=elapsed)
    if code != 0:
        return failed_result(_exit_error(code, trial_dir / STDERR_FILE), metrics=metrics, wall_time_s=elapsed,
                             curve=ctx.curve)
    result_file = trial_dir / RESULT_FILE
    try:
        raw = json.loads(result_file.read_text(encoding="utf-8"))
        return parse_result(raw, metrics=metrics, curve=ctx.curve, wall_time_s=elapsed)
    except FileNotFoundError:
        why = (f"the command exited 0 but wrote no {result_file}; write the result there as JSON, e.g. "
               '{"final_loss": 2.31} (its path is the {result} placeholder and $TELESCOPE_RESULT)')
    except (json.JSONDecodeError, UnicodeDecodeError) as bad:
        why = f"{result_file} is not valid JSON ({bad})"
    except ResultError as bad:
        why = f"{result_file}: {bad}"
    return failed_result(why, metrics=metrics, wall_time_s=elapsed, curve=ctx.curve)


def _kill_group(pgid: int) -> None:
    """Whatever is left of the command's process group (it may have started background work)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exit_error(code: int, stderr: Path) -> str:
    """"the command exited with code 3; stderr ends: ... | ... (all of it in .../stderr.log)"."""
    if code >= 0:
        what = f"the command exited with code {code}"
    else:
        try:
            what = f"the command was killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"the command was killed by signal {-code}"
    with open(stderr, "rb") as f:
        f.seek(max(0, os.path.getsize(stderr) - _STDERR_TAIL_BYTES))
        tail = f.read().decode("utf-8", errors="replace")
    lines = [line.strip()[:_LINE_CHARS] for line in tail.splitlines() if line.strip()][-STDERR_LINES:]
    said = f"stderr ends: {' | '.join(lines)}" if lines else "stderr is empty"
    return f"{what}; {said} (all of it in {stderr})"
