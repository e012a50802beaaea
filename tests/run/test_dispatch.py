"""The dispatcher against a real local Ray (2 CPUs): streaming, failures, retries, limits."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from tests.cluster_helpers import max_overlap
from telescope.run.dispatch import Dispatcher, Job, Outcome, Resources
from telescope.errors import ConfigError

# Workers cannot import this test module by name, so ship its job functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---- jobs (module level, as the dispatcher requires) ----


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(message: str) -> None:
    raise ValueError(message)


def die_first_time(marker: str) -> str:
    if not os.path.exists(marker):
        time.sleep(0.2)  # like a trial that crashes mid-run, after its start was logged
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def always_die(_: object) -> None:
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def stamped(arg: tuple[str, str, float]) -> str:
    """Sleep, recording when it ran, so tests can count how many ran at once."""
    folder, key, seconds = arg
    start = time.time()
    time.sleep(seconds)
    Path(folder, key).write_text(f"{start} {time.time()}")
    return key


def hang(pid_file: str) -> None:
    Path(pid_file).write_text(f"{os.getpid()} {time.time()}")
    time.sleep(60)


def unpicklable(_: object) -> object:
    return threading.Lock()


def increment(n: int) -> int:
    return n + 1


def pid(_: object) -> int:
    return os.getpid()


# ---- helpers ----


@pytest.fixture(scope="module")
def dispatcher():
    owned = not ray.is_initialized()
    d = Dispatcher(num_cpus=2, max_retries=3, poll_interval_s=0.1)
    try:
        # warm both workers (first use imports this module there), so timings below are steady
        d.run([Job("warm0", sleep_for, 0.5), Job("warm1", sleep_for, 0.5)], lambda o: None)
        yield d
    finally:
        d.shutdown()
    assert ray.is_initialized() != owned, "shutdown must stop the Ray it started, and only that"


def run_all(d: Dispatcher, jobs, **kw) -> dict[str, Outcome]:
    got: dict[str, Outcome] = {}
    d.run(jobs, lambda o: got.__setitem__(o.key, o), **kw)
    return got


def intervals(folder: Path) -> list[tuple[float, float]]:
    """The (start, end) each job wrote to its file in `folder`."""
    return [tuple(map(float, f.read_text().split())) for f in folder.iterdir()]


def hung_job(pid_file: Path) -> tuple[int, float]:
    pid, started = pid_file.read_text().split()
    return int(pid), float(started)


def wait_until_dead(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        with contextlib.suppress(OSError):
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # killed, only not yet reaped by its parent
        time.sleep(0.05)
    return False


# ---- tests ----


def test_outcomes_stream_back_as_jobs_finish(dispatcher, tmp_path):
    arrivals: dict[str, float] = {}
    jobs = [Job("slow", stamped, (str(tmp_path), "slow", 2.5)), Job("fast", sleep_for, 0.1)]
    dispatcher.run(jobs, lambda o: arrivals.setdefault(o.key, time.time()))
    assert list(arrivals) == ["fast", "slow"]
    slow_ended = float((tmp_path / "slow").read_text().split()[1])
    assert arrivals["fast"] < slow_ended, "the fast job's outcome waited for the slow job"


def test_exception_becomes_failed_outcome_and_others_finish(dispatcher):
    jobs = [Job("bad", fail, "lr too high"), Job("a", sleep_for, 0.2), Job("b", sleep_for, 0.1)]
    got = run_all(dispatcher, jobs)
    bad = got["bad"]
    assert not bad.ok and bad.failure == "error" and bad.value is None
    assert bad.error.startswith("ValueError: lr too high (test_dispatch.py:")
    assert bad.error.endswith("in fail)")
    assert "raise ValueError(message)" in bad.traceback
    assert bad.attempts == 1, "a Python exception must not be retried"
    assert got["a"].ok and got["a"].value == 0.2 and got["b"].value == 0.1


def test_value_that_cannot_travel_is_an_error(dispatcher):
    got = run_all(dispatcher, [Job("lock", unpicklable)])
    assert got["lock"].failure == "error"
    assert "pickle" in got["lock"].error


def test_killed_worker_is_retried(dispatcher, tmp_path):
    marker = tmp_path / "attempted"
    got = run_all(dispatcher, [Job("phoenix", die_first_time, str(marker))])
    out = got["phoenix"]
    assert out.ok and out.value == "survived"
    assert out.attempts == 2
    assert marker.exists()


def test_worker_dying_every_time_is_lost_after_retries(dispatcher):
    with Dispatcher(max_retries=1) as d:  # joins the module's Ray; leaves it running
        got = run_all(d, [Job("doomed", always_die), Job("fine", sleep_for, 0.1)])
    assert ray.is_initialized()
    doomed = got["doomed"]
    assert doomed.failure == "lost"
    assert doomed.error.startswith("worker died 2 times: WorkerCrashedError")
    assert doomed.attempts == 2
    assert got["fine"].ok


def test_time_limit_cancels_the_job_promptly(dispatcher, tmp_path):
    pid_file = tmp_path / "pid"
    seen: dict[str, float] = {}
    got: dict[str, Outcome] = {}

    def record(o: Outcome) -> None:
        seen[o.key] = time.time()
        got[o.key] = o

    jobs = [Job("stuck", hang, str(pid_file), time_limit_s=1.0)] + [
        Job(f"ok{i}", sleep_for, 0.3) for i in range(3)
    ]
    dispatcher.run(jobs, record)
    stuck = got["stuck"]
    assert stuck.failure == "timeout" and stuck.error == "timed out after 1 s"
    assert 1.0 <= stuck.wall_time_s < 3.0
    pid, started = hung_job(pid_file)
    late = seen["stuck"] - started - 1.0
    assert late < 2.5, f"timeout reported {late:.1f} s after the limit"
    assert all(got[f"ok{i}"].ok for i in range(3))
    assert wait_until_dead(pid, within_s=3), "the timed-out worker still runs"


def test_time_limit_counts_from_start_not_submission(dispatcher):
    # With one slot, "second" waits ~1.2 s in the queue; only its 0.3 s of running counts.
    jobs = [Job("first", sleep_for, 1.2), Job("second", sleep_for, 0.3, time_limit_s=1.0)]
    got = run_all(dispatcher, jobs, max_in_flight=1)
    assert got["second"].ok, got["second"].error


@pytest.mark.parametrize("limit, expected", [(1, 1), (None, 2), (3, 3)])
def test_in_flight_bound(dispatcher, limit, expected):
    """Jobs handed to Ray but not finished never exceed the bound (default: capacity, 2 CPUs)."""
    done: list[str] = []
    peak = 0

    def jobs():
        nonlocal peak
        for i in range(8):
            peak = max(peak, i - len(done))  # job i is only read once jobs 0..i-1 were submitted
            yield Job(f"j{i}", sleep_for, 0.2)

    dispatcher.run(jobs(), lambda o: done.append(o.key), max_in_flight=limit)
    assert len(done) == 8
    assert peak == expected


def test_one_in_flight_runs_one_at_a_time(dispatcher, tmp_path):
    jobs = [Job(f"j{i}", stamped, (str(tmp_path), f"j{i}", 0.2)) for i in range(4)]
    got = run_all(dispatcher, jobs, max_in_flight=1)
    assert all(o.ok for o in got.values()) and len(got) == 4
    assert max_overlap(intervals(tmp_path)) == 1


def test_generator_can_wait_for_outcomes(dispatcher):
    """Ask/tell: each job's argument comes from the previous job's value."""
    told: list[int] = []

    def chain():
        n = 0
        for step in range(4):
            yield Job(f"step{step}", increment, n)
            while len(told) <= step:
                yield None  # nothing to ask until the next outcome is told
            n = told[-1]

    dispatcher.run(chain(), lambda o: told.append(o.value))
    assert told == [1, 2, 3, 4]


def test_waiting_with_nothing_running_is_an_error(dispatcher):
    with pytest.raises(ValueError, match=r"^jobs: ") as err:  # the generator's bug, not the user's
        dispatcher.run(iter([None]), lambda o: None)
    assert not isinstance(err.value, ConfigError)


def test_outcome_says_where_it_ran(dispatcher):
    out = run_all(dispatcher, [Job("here", sleep_for, 0.2)])["here"]
    assert out.node_id == ray.get_runtime_context().get_node_id()
    assert out.node and "(" in out.node
    assert out.gpu_ids == []
    assert out.attempts == 1
    assert 0.2 <= out.wall_time_s < 1.5


def test_gpu_task_gets_a_fresh_worker_each_time(dispatcher):
    # The path GPU jobs take, exercised on CPU: its worker exits after one task, so no CUDA
    # context or cached GPU memory carries over to the next job.
    from telescope.run.dispatch import _on_fresh_worker

    worker = ray.get(_on_fresh_worker.remote(pid, None, dispatcher._start_log, -1)).value
    assert wait_until_dead(worker, within_s=10)


INTERRUPTED_DRIVER = """
import os, signal, sys, time
from pathlib import Path
from telescope.run.dispatch import Dispatcher, Job

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; see the test


def hang(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state == "Z"  # killed, only not yet reaped


dispatcher = Dispatcher(num_cpus=2, poll_interval_s=0.1)
try:
    dispatcher.run([Job("long", hang, sys.argv[1]), Job("short", time.sleep, 0.1)], lambda o: None)
    print("run returned", flush=True)
except KeyboardInterrupt:
    print(f"interrupted at {time.time()}", flush=True)
    pid = int(Path(sys.argv[1]).read_text())
    deadline = time.monotonic() + 3
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("job cancelled" if gone(pid) else "job still running", flush=True)  # before Ray stops
finally:
    dispatcher.shutdown()
"""


def test_interrupt_cancels_running_jobs(tmp_path):
    """A real SIGINT to a fresh driver (as Ctrl-C sends it) while run() sits in ray.wait: run()
    raises KeyboardInterrupt at once and the running job is force-cancelled before Ray stops.
    The driver turns Python's Ctrl-C handler on itself: a test suite started in the background
    (`make test &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    pid_file = tmp_path / "pid"
    driver = tmp_path / "driver.py"
    driver.write_text(INTERRUPTED_DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(pid_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.3)
        signalled = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = out.splitlines()
    assert lines and lines[0].startswith("interrupted at "), out + err
    assert float(lines[0].split()[-1]) - signalled < 3, "run() sat on the interrupt"
    assert lines[1] == "job cancelled"


def test_duplicate_running_key_is_rejected(dispatcher):
    jobs = [Job("same", sleep_for, 0.2), Job("same", sleep_for, 0.2)]
    with pytest.raises(ValueError, match=r"^job\.key: ") as err:
        run_all(dispatcher, jobs)
    assert not isinstance(err.value, ConfigError)


def test_capacity_counts_slots_per_node(dispatcher):
    assert dispatcher.capacity(Resources(num_cpus=1)) == 2
    assert dispatcher.capacity(Resources(num_cpus=0.5)) == 4
    assert dispatcher.capacity(Resources(num_cpus=2)) == 1
    assert dispatcher.capacity(Resources(num_cpus=3)) == 0
    assert dispatcher.capacity(Resources(num_cpus=1, num_gpus=0.25)) == 0  # no GPU here


def test_job_no_node_can_run_is_a_config_error(dispatcher):
    with pytest.raises(ConfigError) as err:
        run_all(dispatcher, [Job("gpu", sleep_for, 0.1, resources=Resources(num_gpus=1))])
    assert err.value.field == "resources.num_gpus"
    assert "0 GPU" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_gpus": 1.5}, "resources.num_gpus"),
        ({"num_gpus": -1}, "resources.num_gpus"),
        ({"num_cpus": -0.5}, "resources.num_cpus"),
        ({"num_cpus": float("nan")}, "resources.num_cpus"),
        ({"num_cpus": 0.00001}, "resources.num_cpus"),
        ({"num_cpus": 0, "num_gpus": 0}, "resources"),
    ],
)
def test_bad_resources(kwargs, field):
    with pytest.raises(ConfigError) as err:
        Resources(**kwargs)
    assert err.value.field == field


def test_good_resources():
    assert Resources(num_gpus=0.25).num_gpus == 0.25
    assert Resources(num_cpus=0, num_gpus=2).as_units() == {"GPU": 20_000}


@pytest.mark.parametrize(
    "kwargs, field, error",
    [
        ({"key": ""}, "job.key", ValueError),
        ({"fn": 3}, "job.fn", TypeError),
        ({"time_limit_s": 0}, "job.time_limit_s", ValueError),
        ({"resources": {"num_cpus": 1}}, "job.resources", TypeError),
    ],
)
def test_bad_jobs(kwargs, field, error):
    # jobs come from code, not from a user: a bad one is a bug
    with pytest.raises(error, match=rf"^{re.escape(field)}: ") as err:
        Job(**{"key": "k", "fn": sleep_for, **kwargs})
    assert not isinstance(err.value, ConfigError)


def test_bad_run_arguments(dispatcher):
    with pytest.raises(ValueError, match=r"^max_in_flight: ") as err:
        dispatcher.run([], lambda o: None, max_in_flight=0)
    assert not isinstance(err.value, ConfigError)
    with pytest.raises(TypeError, match=r"^jobs: "):
        dispatcher.run(["not a job"], lambda o: None)
