"""Run jobs as Ray tasks and stream their outcomes back as they finish.

The dispatcher knows Ray and nothing else: a job is any picklable module-level function and one
argument. Failures never escape as exceptions; each job ends in exactly one `Outcome`:

- the function returned            -> `value` is set, `failure` is None;
- the function raised              -> failure "error", not retried (it would raise again);
- its worker process or node died  -> retried by Ray up to `max_retries`, then failure "lost";
- it ran past its time limit       -> force-cancelled, failure "timeout".

A job whose resources have `workers` > 1 is a launcher: its function starts that many processes
of its own (a Ray Train trainer: telescope.run.distributed), each holding the job's num_cpus and
num_gpus. Its task holds nothing itself, since a launcher holding a CPU that its workers wait
for would deadlock a small cluster, and the dispatcher counts its room in whole groups of workers
(`capacity`). A force-cancelled launcher takes the actors it made with it, but Ray keeps the
placement group that held their resources until the driver ends; once it has run a launcher,
the dispatcher returns every few seconds each such group of its own job whose creating actor has
died (`release_orphaned_groups`), so a time limit frees the workers' resources for whatever runs
next.

Time limits count from the moment the task starts running, not from submission: each attempt
reports its start to a small actor (`_StartLog`) that lives beside the driver, and the driver
polls that actor while any limited job is in flight. A retried attempt starts its clock afresh.

While a dispatcher is open, SIGTERM raises `telescope.errors.Terminated` in the driver, which
unwinds like Ctrl-C: running jobs are cancelled and Ray is stopped (see `Dispatcher`).

Errors: a caller breaking this module's contract (a bad `Job`, a generator yielding something
else, a bad argument) gets ValueError / TypeError; what a user can cause and fix (an address
that does not answer, resources no node has) is a ConfigError.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import ray
from ray._private import ray_constants
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from telescope.errors import ConfigError, Terminated
from telescope.spec.resources import UNITS, Resources

__all__ = ["Dispatcher", "Failure", "Job", "Outcome", "Resources"]

Failure = Literal["error", "timeout", "lost"]

_MESSAGE_CHARS = 500
_CAPACITY_TTL_S = 5.0  # nodes come and go; re-read the cluster this often while a run is going
_ORPHAN_CHECK_S = 2.0  # how often placement groups left by killed launchers are looked for
_START_LOG_TIMEOUT_S = 10.0
_LOST = (WorkerCrashedError, NodeDiedError, OutOfMemoryError, ObjectLostError)
_LOOPBACK = "127.0.0.1"

SignalHandler = Callable[[int, Any], Any] | int | None  # what signal.getsignal returns


def _whole_number(name: str, value: object, minimum: int) -> None:
    """A programmer's argument: TypeError unless an int (not a bool), ValueError below `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: must be a whole number >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be a whole number >= {minimum}; got {value!r}")


@dataclass(frozen=True)
class Job:
    """`fn(arg)` run as one Ray task. `key` names the job in its outcome (unique while running)."""

    key: str
    fn: Callable[[Any], Any]
    arg: Any = None
    resources: Resources = field(default_factory=Resources)
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        # Jobs are built by code (the controller, a study), never from user input, which the spec
        # checks first: a bad field here is a bug, reported as one.
        if not isinstance(self.key, str):
            raise TypeError(f"job.key: must be a non-empty string; got {self.key!r}")
        if not self.key:
            raise ValueError(f"job.key: must be a non-empty string; got {self.key!r}")
        if not callable(self.fn):
            raise TypeError(f"job.fn: must be callable; got {self.fn!r}")
        if not isinstance(self.resources, Resources):
            raise TypeError(f"job.resources: must be a Resources; got {self.resources!r}")
        limit = self.time_limit_s
        if limit is None:
            return
        if not isinstance(limit, (int, float)) or isinstance(limit, bool):
            raise TypeError(f"job.time_limit_s: must be a positive number of seconds or None; got {limit!r}")
        if not 0 < limit < math.inf:
            raise ValueError(f"job.time_limit_s: must be a positive number of seconds or None; got {limit!r}")


@dataclass
class Outcome:
    """How one job ended. Exactly one of `value` (success) and `error` (failure) is meaningful."""

    key: str
    value: Any | None
    error: str | None  # one line: "ValueError: msg (file.py:12 in fn)", "timed out after 30 s", ...
    failure: Failure | None
    node: str  # "hostname (ip)" where the last attempt ran; "" if it never started
    node_id: str  # Ray's node id, for joining with Ray's own logs
    gpu_ids: list[str]
    wall_time_s: float  # the function's run time; for a timeout, how long it had run
    attempts: int  # attempts Ray started (> 1 after a worker died); 0 if none was seen to start
    traceback: str | None = None  # the function's full traceback when it raised

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class _Where:
    node: str
    node_id: str
    gpu_ids: list[str]


@dataclass
class _Report:
    """What the task sends back: the function's value or error, and where it ran."""

    value: Any
    error: str | None
    traceback: str | None
    where: _Where
    wall_time_s: float
    attempt: int


@ray.remote(num_cpus=0)
class _StartLog:
    """Start time and attempt count of each running task, kept on the driver's node.

    Ages are measured on this actor's own clock, so no two machines' clocks are ever compared.
    """

    def __init__(self) -> None:
        self._runs: dict[int, tuple[float, int, _Where]] = {}

    def started(self, serial: int, where: _Where) -> int:
        attempts = self._runs[serial][1] + 1 if serial in self._runs else 1
        self._runs[serial] = (time.monotonic(), attempts, where)
        return attempts

    def ages(self, serials: list[int], forget: list[int]) -> dict[int, tuple[float, int, _Where]]:
        for serial in forget:
            self._runs.pop(serial, None)
        now = time.monotonic()
        return {s: (now - self._runs[s][0], *self._runs[s][1:]) for s in serials if s in self._runs}


def one_line(err: BaseException) -> str:
    """An exception's type and the first line of its message, cut to a ledger row's length."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text[:_MESSAGE_CHARS]


def raised_at(err: BaseException) -> str:
    """An exception in one line with where it was raised: "ValueError: msg (file.py:12 in fn)"."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return f"{one_line(err)} ({os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})"


@functools.cache
def this_host() -> tuple[str, str]:
    """(hostname (ip), node id) of this worker process; fixed for its life."""
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    return node, ray.get_runtime_context().get_node_id()


def _execute(fn: Callable[[Any], Any], arg: Any, start_log: Any, serial: int) -> _Report:
    node, node_id = this_host()
    where = _Where(node, node_id, [str(g) for g in ray.get_gpu_ids()])
    # Logged without waiting: a task blocked in ray.get lends its CPU to the next queued task,
    # which would then run beside it. Awaited once fn is done, when lending is harmless.
    started = start_log.started.remote(serial, where)
    t0 = time.perf_counter()
    try:
        value, error, trace = fn(arg), None, None
    except Exception as err:  # noqa: BLE001 — any exception is the job's outcome, not ours
        value, error, trace = None, raised_at(err), traceback.format_exc()
    wall = time.perf_counter() - t0
    try:
        attempt = ray.get(started, timeout=_START_LOG_TIMEOUT_S)
    except RayError:
        attempt = 0  # losing the bookkeeping actor must not fail the job itself
    return _Report(value, error, trace, where, wall, attempt)


@ray.remote
def _on_reused_worker(fn: Callable[[Any], Any], arg: Any, start_log: Any, serial: int) -> _Report:
    return _execute(fn, arg, start_log, serial)


# GPU jobs get a fresh worker process each, Ray's own default for GPU tasks (which `.options()`
# cannot set): a reused process would keep its CUDA context and cached GPU memory.
@ray.remote(max_calls=1)
def _on_fresh_worker(fn: Callable[[Any], Any], arg: Any, start_log: Any, serial: int) -> _Report:
    return _execute(fn, arg, start_log, serial)


@dataclass
class _Running:
    serial: int
    job: Job
    submitted: float  # driver's monotonic clock; the fallback start when the start log is lost


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def _use_token_auth_for_remote() -> None:
    """Send our token to a cluster we connect to, if we have one and the user has not chosen.

    Ray 2.60 turns token auth on for clusters it starts (`ray start` too, once a token exists
    in ~/.ray/auth_token), but a driver given an explicit address never turns it on by itself,
    so it is refused ("InvalidAuthToken") for half a minute and then fails with ConnectionError.
    A token sent to a cluster without auth is ignored, so sending it is always safe. Ray caches
    the mode at import, hence the refresh.
    """
    if os.environ.get("RAY_AUTH_MODE") is None and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Make the private local Ray listen on 127.0.0.1 only.

    Ray's servers (GCS, raylet, object manager, core workers, agents) bind to loopback only when
    the node's IP is exactly 127.0.0.1, and every interface otherwise; but ray.init rewrites a
    loopback `_node_ip_address` to the machine's outward IP, unless Ray thinks it runs where
    clusters are off (its Windows/macOS switch, which answers loopback for the node's IP). The
    switch is read at call time, so it is flipped for ray.init only; the processes started
    then get 127.0.0.1 on their command lines and keep it.
    """
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _signal_exception(err: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated behind `err`, if a signal is what raised it.

    A signal's exception is raised inside a Ray call (ray.wait checks for signals while it
    blocks). When the same signal also stopped Ray's own processes (SIGTERM to the whole process
    group, as a batch scheduler sends it), that call then fails too, and Ray reports a
    SystemError ("returned a result with an exception set") whose direct cause is the signal's
    exception. Only direct causes are followed: an error raised while handling a Ctrl-C is a
    bug of its own, not the Ctrl-C.
    """
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        if isinstance(link, (KeyboardInterrupt, Terminated)):
            return link
        seen.add(id(link))
        link = link.__cause__
    return None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _quiet_auth_warning() -> Iterator[None]:
    # A private local cluster with a fresh token is the normal case here, not news.
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        auth_log.setLevel(level)


class Dispatcher:
    """Runs `Job`s on a Ray cluster and calls back with each `Outcome` as soon as it is known.

    `address=None` starts a private local Ray (never joins whatever RAY_ADDRESS or the last
    `ray start` point at); any other address is passed to `ray.init` ("auto", "ip:port",
    "ray://..."). If Ray is already initialised in this process, that connection is used and
    left open on `shutdown()`.

    Workers must be able to import each job's function: locally they run this interpreter (the
    project's venv) in this working directory; on a cluster install the package there or pass
    `runtime_env` (e.g. {"py_modules": [telescope]}).

    The private local Ray listens on 127.0.0.1 only: nothing on the network can reach it.

    SIGTERM: `ray.init` replaces the process's SIGTERM handler with Ray's (which exits at once,
    leaving the trials' processes behind, after a C++ stack dump). So while the dispatcher is
    open (from its construction, on the main thread, to `shutdown()`), SIGTERM raises
    `telescope.errors.Terminated` instead, which unwinds like Ctrl-C: `run()` cancels every
    running job and `shutdown()` stops Ray, then puts back the handler that was there before the
    dispatcher (an ignored SIGTERM stays ignored). A SIGTERM during `ray.init` itself still meets
    Ray's handler.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        max_retries: int = 3,
        runtime_env: dict[str, Any] | None = None,
        log_to_driver: bool = False,
        poll_interval_s: float = 0.25,
    ) -> None:
        # The spec and the CLI check what a user gives; these come from code, so a bad one is a bug.
        _whole_number("max_retries", max_retries, 0)
        if not isinstance(poll_interval_s, (int, float)) or isinstance(poll_interval_s, bool):
            raise TypeError(f"poll_interval_s: must be a number of seconds in (0, 10]; got {poll_interval_s!r}")
        if not 0 < poll_interval_s <= 10:
            raise ValueError(f"poll_interval_s: must be a number of seconds in (0, 10]; got {poll_interval_s!r}")
        # These size the cluster a user asked for (`--num-cpus`, a notebook's num_cpus=...).
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(name, f"must be a whole number >= 0; got {value!r}")
        self.max_retries = max_retries
        self.poll_interval_s = float(poll_interval_s)
        self._start_log: Any = None
        self._serial = 0
        self._capacity_cache: dict[Resources, tuple[float, int]] = {}  # resources -> (when, fits)
        self._launched = False  # a launcher has run: a killed one's placement group may be left to release
        self._owns_ray = not ray.is_initialized()
        # Taken before ray.init, which replaces it with Ray's own handler.
        self._sigterm_before: SignalHandler = signal.getsignal(signal.SIGTERM) if _on_main_thread() else None
        self._sigterm_restored = False
        try:
            if self._owns_ray:
                self._connect(address, num_cpus, num_gpus, runtime_env, log_to_driver)
            self._handle_sigterm()
            # Pinned to the driver's own node (hard affinity: it needs no resources, so it always
            # fits). Ray does not honour soft affinity for actors reliably: it was seen to place
            # this one on a worker node, whose loss (a spot GPU node) would then take every start
            # time with it, and the time limits would fall back to counting from submission.
            self._start_log = _StartLog.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_id=ray.get_runtime_context().get_node_id(), soft=False
                )
            ).remote()
            # Wait until it is up: a task's start message sent to an actor still being created
            # is lost if that task's worker dies first, and the attempt goes uncounted.
            ray.get(self._start_log.ages.remote([], []))
        except BaseException as err:
            self.shutdown()  # no caller holds this dispatcher yet: stop the Ray it started
            signalled = _signal_exception(err)
            if signalled is not None and signalled is not err:
                raise signalled from None
            raise

    def _handle_sigterm(self) -> None:
        """SIGTERM -> Terminated from here to shutdown(), replacing whatever ray.init put there."""
        if not _on_main_thread():
            return  # only the main thread may set handlers, and only it would receive the exception
        if self._sigterm_before == signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # whoever started us chose to ignore it
        else:
            signal.signal(signal.SIGTERM, Terminated.handler)

    def _restore_sigterm(self) -> None:
        if self._sigterm_restored or not _on_main_thread():
            return
        self._sigterm_restored = True
        # A handler set outside Python (by C code) reads as None and cannot be put back as such.
        previous = self._sigterm_before if self._sigterm_before is not None else signal.SIG_DFL
        signal.signal(signal.SIGTERM, previous)

    @staticmethod
    def _connect(
        address: str | None,
        num_cpus: int | None,
        num_gpus: int | None,
        runtime_env: dict[str, Any] | None,
        log_to_driver: bool,
    ) -> None:
        common = {
            "runtime_env": runtime_env,
            "log_to_driver": log_to_driver,  # workers' prints stay in Ray's session logs
            "logging_level": logging.WARNING,
            "include_dashboard": False,
        }
        if address is None:
            with _quiet_auth_warning(), _loopback_node():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    _node_ip_address=_LOOPBACK,
                    dashboard_host=_LOOPBACK,  # should the dashboard ever be turned on
                    **common,
                )
            return
        if num_cpus is not None or num_gpus is not None:
            raise ConfigError(
                "num_cpus", "num_cpus/num_gpus size a local cluster; an existing cluster has its own"
            )
        _use_token_auth_for_remote()
        try:
            ray.init(address=address, **common)
        except ConnectionError as err:
            raise ConfigError(
                "address",
                f"could not connect to the Ray cluster at {address!r} ({err}); if it uses token "
                "authentication, provide its token in RAY_AUTH_TOKEN, a file named by "
                "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, and leave RAY_AUTH_MODE unset or 'token'",
            ) from err

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Drop the bookkeeping actor; stop Ray only if this dispatcher started the connection;
        put back the SIGTERM handler that was there before the dispatcher."""
        try:
            if not ray.is_initialized():
                return
            if self._start_log is not None:
                with contextlib.suppress(RayError):
                    ray.kill(self._start_log)
            if self._owns_ray:
                ray.shutdown()
        finally:
            self._restore_sigterm()  # last: a SIGTERM while Ray stops must still not kill us

    def capacity(self, resources: Resources) -> int:
        """How many jobs asking for `resources` fit on the cluster's live nodes at once.

        Counted node by node (a process cannot span nodes) from each node's total resources, so it
        does not shrink while our own jobs run; a job of `workers` > 1 is as many such processes,
        on any nodes.
        """
        return self._worker_slots(resources) // resources.workers

    @staticmethod
    def _worker_slots(resources: Resources) -> int:
        """How many processes holding `resources.num_cpus` / `num_gpus` the live nodes hold at once."""
        want = resources.as_units()
        fits = 0
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            have = node.get("Resources", {})
            fits += min(round(have.get(name, 0) * UNITS) // units for name, units in want.items())
        return fits

    def _room(self, resources: Resources, max_in_flight: int | None) -> int:
        if max_in_flight is not None:
            return max_in_flight
        now = time.monotonic()
        cached = self._capacity_cache.get(resources)
        if cached is None or now - cached[0] > _CAPACITY_TTL_S:
            cached = self._capacity_cache[resources] = (now, self.capacity(resources))
        return cached[1]

    def _unfit(self, resources: Resources) -> ConfigError:
        total = ray.cluster_resources()
        cluster = f"cluster total: {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"
        each = f"{resources.num_cpus:g} CPU and {resources.num_gpus:g} GPU"
        slots = self._worker_slots(resources) if resources.workers > 1 else 0
        if slots:
            return ConfigError(
                "resources.workers",
                f"no live node can run the {resources.workers} workers of a job asking for {each} each: the live "
                f"nodes hold {slots} such workers at once ({cluster}); ask for fewer workers or less per worker",
            )
        field_name = "resources.num_gpus" if resources.num_gpus else "resources.num_cpus"
        return ConfigError(field_name, f"no live node can run a job asking for {each} ({cluster})")

    def run(
        self,
        jobs: Iterable[Job | None],
        on_outcome: Callable[[Outcome], None],
        *,
        max_in_flight: int | None = None,
    ) -> None:
        """Run every job from `jobs`, calling `on_outcome` once per job as soon as it ends.

        `jobs` is read lazily, one job at a time when there is room, so it may be a generator
        that decides what to run next from the outcomes seen so far (ask/tell). Yielding None
        means "nothing to submit until the next outcome"; it is then resumed after one arrives.
        At most `max_in_flight` jobs run at once (default: `capacity()` of each job's resources,
        re-read every few seconds; with mixed resources Ray queues any surplus).

        On any exception, KeyboardInterrupt included (from a signal, `jobs` or `on_outcome`),
        every job still running is force-cancelled before the exception propagates.
        """
        if max_in_flight is not None:
            _whole_number("max_in_flight", max_in_flight, 1)
        source = iter(jobs)
        running: dict[ray.ObjectRef, _Running] = {}
        finished: list[int] = []  # serials the start log may forget
        next_job: Job | None = None
        exhausted = waiting = False
        last_check = last_orphan_check = time.monotonic()
        try:
            while True:
                while not exhausted and not (next_job is None and waiting):
                    if next_job is None:
                        try:
                            next_job = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        if next_job is None:
                            if not running:
                                raise ValueError(
                                    "jobs: yielded None (wait for an outcome) while nothing runs: "
                                    "it would wait forever"
                                )
                            waiting = True
                            break
                        self._check_new(next_job, running)
                    if len(running) >= self._room(next_job.resources, max_in_flight):
                        break
                    ref, serial = self._submit(next_job)
                    running[ref] = _Running(serial, next_job, time.monotonic())
                    next_job = None
                if not running:
                    if next_job is None:
                        return
                    raise self._unfit(next_job.resources)

                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_interval_s)
                if ready:  # drain everything already done, not just the first
                    ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
                for ref in ready:
                    run = running.pop(ref)
                    finished.append(run.serial)
                    on_outcome(self._collect(ref, run))
                    waiting = False
                if len(finished) >= 256:
                    self._start_log.ages.remote([], finished[:])
                    finished.clear()
                if time.monotonic() - last_check >= self.poll_interval_s:
                    last_check = time.monotonic()
                    for outcome in self._enforce_limits(running, finished):
                        on_outcome(outcome)
                        waiting = False
                if self._launched and time.monotonic() - last_orphan_check >= _ORPHAN_CHECK_S:
                    last_orphan_check = time.monotonic()
                    release_orphaned_groups()
        except BaseException as err:
            # Force-cancel only what is still running: cancelling a task that is finishing at
            # that moment can trip a fatal check inside Ray's task manager.
            with contextlib.suppress(Exception):
                done, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
                for ref in done:
                    running.pop(ref)
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            signalled = _signal_exception(err)
            if signalled is not None and signalled is not err:
                raise signalled from None  # what the user did, not how Ray's call then failed
            raise
        finally:
            if finished:
                with contextlib.suppress(Exception):
                    self._start_log.ages.remote([], finished)

    def _check_new(self, job: Any, running: dict[ray.ObjectRef, _Running]) -> None:
        if not isinstance(job, Job):
            raise TypeError(f"jobs: must yield Job (or None to wait); got {type(job).__name__}")
        if any(r.job.key == job.key for r in running.values()):
            raise ValueError(
                f"job.key: {job.key!r} is already running; keys must be unique among running jobs"
            )
        if self._room(job.resources, None) == 0:
            raise self._unfit(job.resources)

    def _submit(self, job: Job) -> tuple[ray.ObjectRef, int]:
        self._serial += 1
        launcher = job.resources.workers > 1  # its workers hold the resources (see the module docstring)
        self._launched |= launcher
        task = _on_fresh_worker if job.resources.num_gpus and not launcher else _on_reused_worker
        ref = task.options(
            name=job.key,
            num_cpus=0 if launcher else job.resources.num_cpus,
            num_gpus=0 if launcher else job.resources.num_gpus,
            max_retries=self.max_retries,
            retry_exceptions=False,  # the function's own exceptions are outcomes, never retried
        ).remote(job.fn, job.arg, self._start_log, self._serial)
        return ref, self._serial

    def _collect(self, ref: ray.ObjectRef, run: _Running) -> Outcome:
        try:
            report: _Report = ray.get(ref)
        except _LOST as err:
            _, attempts, where = self._last_start(run)
            error = f"worker died {attempts} times: {one_line(err)}"
            return self._failed(run, where, error, "lost", attempts, err)
        except RayTaskError as err:  # raised outside the function, e.g. its value would not pickle
            _, attempts, where = self._last_start(run)
            cause = getattr(err, "cause", None) or err
            return self._failed(run, where, one_line(cause), "error", attempts, err)
        except RayError as err:
            _, attempts, where = self._last_start(run)
            return self._failed(run, where, one_line(err), "error", attempts, err)
        return Outcome(
            key=run.job.key,
            value=report.value,
            error=report.error,
            failure=None if report.error is None else "error",
            node=report.where.node,
            node_id=report.where.node_id,
            gpu_ids=report.where.gpu_ids,
            wall_time_s=report.wall_time_s,
            attempts=report.attempt,
            traceback=report.traceback,
        )

    def _failed(
        self, run: _Running, where: _Where, error: str, failure: Failure, attempts: int, err: BaseException
    ) -> Outcome:
        return Outcome(
            key=run.job.key,
            value=None,
            error=error,
            failure=failure,
            node=where.node,
            node_id=where.node_id,
            gpu_ids=where.gpu_ids,
            wall_time_s=time.monotonic() - run.submitted,
            attempts=attempts,
            traceback="".join(traceback.format_exception_only(err)),
        )

    def _last_start(self, run: _Running) -> tuple[float, int, _Where]:
        try:
            found = ray.get(self._start_log.ages.remote([run.serial], []))
        except RayError:
            found = {}
        return found.get(run.serial, (time.monotonic() - run.submitted, 0, _Where("", "", [])))

    def _enforce_limits(self, running: dict[ray.ObjectRef, _Running], finished: list[int]) -> list[Outcome]:
        limited = {ref: run for ref, run in running.items() if run.job.time_limit_s is not None}
        if not limited:
            return []
        try:
            ages = ray.get(self._start_log.ages.remote([r.serial for r in limited.values()], finished))
            finished.clear()
        except RayError:  # without the start log, count from submission: an upper bound on run time
            now = time.monotonic()
            ages = {r.serial: (now - r.submitted, 0, _Where("", "", [])) for r in limited.values()}
        outcomes = []
        for ref, run in limited.items():
            if run.serial not in ages:
                continue  # still queued: its clock has not started
            age, attempts, where = ages[run.serial]
            limit = run.job.time_limit_s
            assert limit is not None
            if age <= limit:
                continue
            if ray.wait([ref], timeout=0)[0]:
                continue  # it finished just now; the next wait collects its real result
            ray.cancel(ref, force=True)
            del running[ref]
            finished.append(run.serial)
            outcomes.append(
                Outcome(
                    key=run.job.key,
                    value=None,
                    error=f"timed out after {limit:g} s",
                    failure="timeout",
                    node=where.node,
                    node_id=where.node_id,
                    gpu_ids=where.gpu_ids,
                    wall_time_s=age,
                    attempts=attempts,
                )
            )
        return outcomes


def release_orphaned_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; how many were removed.

    Ray keeps a placement group made by an actor until both that actor and its job are gone. Ray
    Train's controller actor makes one per worker group, so a trainer whose launcher was
    force-killed would hold its workers' resources for the rest of the sweep (Ray Train's own
    cleaner asks the dashboard's state API, which the private local Ray does not run). Only
    groups of this driver's job go, and only those whose creator is dead: nothing can still use
    them. Ray's public placement-group table leaves out the creator, hence the raw GCS table; if
    a Ray release changes it, this warns once and releases nothing rather than stop the sweep.
    """
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        job = ray.get_runtime_context().get_job_id()
        nil_actor = ray.ActorID.nil().binary()  # the creator of a group made by a task or the driver
        removed = 0
        for raw in state._connect_and_get_accessor().get_placement_group_table():
            data = gcs_pb2.PlacementGroupTableData.FromString(raw)
            if data.state == gcs_pb2.PlacementGroupTableData.REMOVED or data.is_detached:
                continue
            if data.creator_job_id.hex() == job and data.creator_actor_id != nil_actor and data.creator_actor_dead:
                with contextlib.suppress(RayError):
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID(data.placement_group_id)))
                    removed += 1
        return removed
    except Exception as err:  # noqa: BLE001 — Ray's internals moved: keep the sweep going, say so once
        _warn_once(f"cannot look for placement groups left by killed trials ({one_line(err)}); a multi-worker "
                   "trial stopped by its time limit may keep its workers' resources until the sweep ends")
        return 0


@functools.cache
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)
