"""Multi-worker trials: one trial on `workers` processes, as a Ray Train `TorchTrainer` (DDP).

A level whose `[resources] workers` is N > 1 runs each of its trials on N Ray Train workers,
each holding the level's `num_cpus` / `num_gpus`, with torch.distributed initialised among them
(NCCL when they hold GPUs, gloo on CPUs). The sweep launches such a trial like any other: one
dispatcher Job whose function (`run_distributed`, on a Ray task of its own) builds the trainer and
fits it, so outcomes, time limits, SIGTERM and the ledger path stay the dispatcher's. That task,
the launcher, holds no resources itself (a task holding a CPU while its workers wait for that CPU
would deadlock a small cluster); the dispatcher counts such a job as N workers' worth of room.

What every rank runs, by the trainable's kind:

- builtin: `telescope.train.trial.run_trial(cfg, device=ray.train.torch.get_device())`. The engine
  gives each rank its 1/N share of every global batch and averages the gradients before Muon, so
  the trial computes what one worker with the whole batch computes, and every rank returns the
  same TrialResult.
- python: the user's function (telescope.run.trainables.run_trainable), with torch.distributed
  initialised; `ctx.rank`, `ctx.local_rank` and `ctx.world_size` say which rank it is. Only rank
  0's `ctx.report` calls feed the curve and only rank 0's return value is the result. Report the
  same (all-reduced) loss on every rank: each rank applies the divergence rule to what it reports,
  so all of them stop at the same step.
- command: not run here. Its single Ray task holds workers x the per-worker resources on one node
  and the command launches its own ranks (torchrun, say) from the `{workers}` placeholder.

Only rank 0's result is recorded, with the number of workers and the distinct nodes they ran on
(all-gathered over the process group before training) and, as `attempt`, how many times the
worker group was started.

Faults. A worker process or node that dies makes Ray Train stop the whole group and start it
afresh, up to the spec's max_retries (FailureConfig(max_failures)); a trial whose group still
fails is recorded as failed with the first failing rank's error. Ray Train cannot tell a bug from
a crash, so an exception raised on a rank is retried too. The time limit and a cancelled sweep
force-kill the launcher; Ray then kills what it owns, the Train controller actor and through it
every worker, and the dispatcher returns the placement group that held their resources
(telescope.run.dispatch.release_orphaned_groups). When the sweep's controller dies,
its Ray job ends and Ray removes all of it: nothing is left for `resume` to run twice.

Ray Train's storage (RunConfig) is DIR/trials/<trial_id>/ray-train under the sweep directory when
the launcher's node sees it, else under that node's temporary directory; never ~/ray_results.
Workers keep the sweep's working directory (Ray Train would otherwise chdir into its session
directory, and relative data paths would break).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from telescope.core.contract import TrialConfig, TrialResult
from telescope.core.trainable import failed_result
from telescope.run.dispatch import one_line, raised_at, this_host
from telescope.spec.resources import Resources

__all__ = ["DistributedTask", "RankZero", "distributed_trial", "run_distributed"]

STORAGE_DIR = "ray-train"  # Ray Train's files inside the trial's directory
_ATTEMPTS_NAMESPACE = "telescope-attempts"


@dataclass(frozen=True)
class Where:
    """One rank's place: "hostname (ip)", Ray's node id and the GPUs it holds."""

    node: str
    node_id: str
    gpu_ids: tuple[str, ...]


@dataclass(frozen=True)
class RankZero:
    """What a multi-worker trial's launcher returns: rank 0's result and where the ranks ran."""

    result: TrialResult
    workers: int
    ranks: tuple[Where, ...]  # by rank; () when the group never got as far as training
    attempts: int  # worker-group starts that reached training

    @property
    def nodes(self) -> int | None:
        """Distinct nodes the ranks ran on; None when unknown."""
        return len({w.node_id for w in self.ranks}) or None


@dataclass(frozen=True)
class DistributedTask:
    """One multi-worker trial, as shipped to its launcher task.

    `arg` is what each rank trains: a TrialConfig (the built-in GPT) or a
    telescope.run.trainables.TrainableTask (a user's Python function)."""

    key: str  # the trial id: names Ray Train's run and its storage directory
    arg: Any
    workers: int
    resources: Resources  # what each worker holds
    max_failures: int  # worker-group restarts allowed after the first start
    trial_root: str | None = None  # the sweep's DIR/trials as the controller sees it; None: a temporary directory

    def __post_init__(self) -> None:
        # Built by code (the launcher, a benchmark) from a checked spec: a bad value is a bug.
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers: must be a whole number >= 1; got {self.workers!r}")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"max_failures: must be a whole number >= 0; got {self.max_failures!r}")


def distributed_trial(config: TrialConfig, *, workers: int, resources_per_worker: Resources,
                      max_failures: int = 0) -> TrialResult:
    """Train the built-in GPT's `config` on `workers` Ray Train workers, each holding
    `resources_per_worker`, from inside an initialised Ray (a driver, or a task). Rank 0's result."""
    return run_distributed(DistributedTask("telescope-trial", config, workers, resources_per_worker,
                                           max_failures)).result


def run_distributed(task: DistributedTask) -> RankZero:
    """Fit one multi-worker trial (the dispatcher Job's function; see the module docstring)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig

    use_gpu = task.resources.num_gpus > 0
    per_worker = {"CPU": task.resources.num_cpus, **({"GPU": task.resources.num_gpus} if use_gpu else {})}
    counter = f"{task.key}-{uuid.uuid4().hex}"  # attempts of this launch only: a retried launch counts afresh
    with _storage(task) as storage, _train_settings():
        trainer = _trainer_class()(
            _on_each_rank,
            train_loop_config={"task": task, "counter": counter},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=task.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
            run_config=RunConfig(name=STORAGE_DIR, storage_path=storage,
                                 failure_config=FailureConfig(max_failures=task.max_failures)),
        )
        try:
            value: RankZero = trainer.fit().return_value
        except TrainingFailedError as err:
            attempts = _attempts(counter)
            error = f"{_failure(err)} (worker group started {attempts} time{'s' if attempts != 1 else ''})"
            value = RankZero(failed_result(error, metrics=_metrics(task)), task.workers, (), attempts)
        finally:
            _forget_attempts(counter)
            # The trainer's controller lives as long as its actor handle, which a reference cycle
            # in the trainer holds: collected now, the controller exits with its trial instead of
            # at some later collection in this reused worker process.
            del trainer
            gc.collect()
    return value


# Ray Train callbacks that start an actor per trial that telescope's trials never use: the
# placement-group cleaner (a detached actor asking the dashboard's state API whether the controller
# lives; without a dashboard it gives up at once and, when its trainer is killed, lives on for
# good: the dispatcher releases those placement groups itself) and the manager of Ray Datasets
# (trials read their own corpus).
_UNUSED_CALLBACKS = ("PlacementGroupCleanerCallback", "DatasetsCallback")


def _trainer_class() -> Any:
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        """A TorchTrainer without the callbacks of _UNUSED_CALLBACKS."""

        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ not in _UNUSED_CALLBACKS]

    return Trainer


def _metrics(task: DistributedTask) -> tuple[str, ...]:
    trainable = getattr(task.arg, "trainable", None)
    return tuple(trainable.metrics) if trainable is not None else ()


def _on_each_rank(config: dict[str, Any]) -> RankZero | None:
    """Ray Train's function on every worker: where this rank is, then its training."""
    import ray
    import ray.train
    import torch.distributed as dist

    task: DistributedTask = config["task"]
    context = ray.train.get_context()
    rank, local_rank, world = context.get_world_rank(), context.get_local_rank(), context.get_world_size()
    here = Where(*this_host(), tuple(str(g) for g in ray.get_gpu_ids()))
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, here)
    attempts = _count_attempt(config["counter"]) if rank == 0 else 0
    try:
        result = _train(task, rank, local_rank, world)
    except Exception as err:  # noqa: BLE001 — Ray Train ships the exception, not its traceback
        raise RankError(raised_at(err)) from err
    return RankZero(result, world, tuple(ranks), attempts) if rank == 0 else None


class RankError(Exception):
    """What a rank raised, as one line with where: "ValueError: msg (file.py:12 in fn)"."""


def _train(task: DistributedTask, rank: int, local_rank: int, world: int) -> TrialResult:
    if isinstance(task.arg, TrialConfig):
        from ray.train.torch import get_device
        from telescope.train.trial import run_trial

        device = None if task.arg.device == "cpu" else get_device()  # "cpu" stays the CPU on a GPU worker
        return run_trial(task.arg, device=device)
    from telescope.run.trainables import run_trainable

    return run_trainable(task.arg, rank=rank, local_rank=local_rank, world_size=world)


# ---- attempts: counted by rank 0 in Ray's key-value store, which every process of the cluster
# reaches without another actor. Attempts never overlap, so a read-then-write is enough.


def _count_attempt(counter: str) -> int:
    from ray.experimental import internal_kv

    n = _attempts(counter) + 1
    internal_kv._internal_kv_put(counter, str(n), overwrite=True, namespace=_ATTEMPTS_NAMESPACE)
    return n


def _attempts(counter: str) -> int:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(counter, namespace=_ATTEMPTS_NAMESPACE)
    return int(raw) if raw else 0


def _forget_attempts(counter: str) -> None:
    from ray.experimental import internal_kv

    with contextlib.suppress(Exception):  # bookkeeping: losing it must not fail the trial
        internal_kv._internal_kv_del(counter, namespace=_ATTEMPTS_NAMESPACE)


def _failure(err: Exception) -> str:
    """One line for a group that failed for good. A rank whose process died is the cause (the
    others then fail in their collectives: "Connection closed by peer"); else the lowest rank
    that raised, as "rank 1: ValueError: msg (file.py:12 in fn)"; else the controller's error."""
    from ray.exceptions import RayActorError

    failures = getattr(err, "worker_failures", None) or {}
    if not failures:
        return one_line(getattr(err, "controller_failure", None) or err)
    dead = [r for r, e in failures.items() if isinstance(e, RayActorError) or hasattr(e, "health_check_failure")]
    rank = min(dead or failures)
    if dead:
        return f"rank {rank}: its worker process died ({one_line(failures[rank])})"
    cause = failures[rank]
    return f"rank {rank}: {cause if isinstance(cause, RankError) else one_line(cause)}"


@contextlib.contextmanager
def _storage(task: DistributedTask) -> Iterator[str]:
    """Ray Train's storage path for this trial (see the module docstring)."""
    if task.trial_root is not None:
        from telescope.run.trainables import trial_directory

        yield str(trial_directory(task.trial_root, task.key, clear=False))
        return
    with tempfile.TemporaryDirectory(prefix="telescope-train-") as path:
        yield path


@contextlib.contextmanager
def _train_settings() -> Iterator[None]:
    """How Ray Train runs our trials, set in this process only while fit() runs (it reads them
    when it builds its callbacks and its controller; the controller inherits them):

    - RAY_CHDIR_TO_TRIAL_DIR=0: workers keep the sweep's working directory;
    - RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: a preempted node is a dead worker like any other,
      retried up to max_retries rather than without limit, and no watcher process per trial.

    fit() also installs a SIGINT handler that holds the controller's handle, which would keep
    the controller alive in this reused worker until the next trial; the old one is put back."""
    settings = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    before = {name: os.environ.get(name) for name in settings}
    sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
