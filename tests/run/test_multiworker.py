"""Multi-worker trials on Ray Train (telescope.run.distributed), on one real local Ray of 2 CPUs
shared by the module: the built-in GPT on 2 gloo workers against one worker, sweeps whose levels
mix one-worker and multi-worker trials (sweeps/ddp.toml among them) and what `status` shows of
them, a command trial's {workers}, what does not fit, a ledger from before multi-worker trials,
a Ray Train worker killed mid-trial, and a time limit.

`ddp_train` is a Python trainable that all-reduces over its ranks every step (so a missing rank
blocks the others) and leaves the pid of each rank in its trial directory, rank<r>.pid, rewritten
by every attempt: the marker by which the tests find a trial's Ray Train workers in the process
table.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from telescope.api import Sweep
from telescope.core.trainable import Trainable
from telescope.errors import ConfigError
from telescope.run.dispatch import Dispatcher
from telescope.run.distributed import distributed_trial
from telescope.run.outcomes import outcome_record
from telescope.run.progress import Progress
from telescope.run.trainables import Launcher
from telescope.spec.resources import Resources
from telescope.spec.sweep import load_spec
from telescope.store.ledger import Ledger
from telescope.store.records import trial_record
from tests.cluster_helpers import descendants
from tests.sweep_helpers import ROOT, only_lr_axis, run_cli, write_spec
from tests.trainable_helpers import synthetic_loss, trainable_spec

STEPS = 4
LIMIT_S = 25  # the hanging trial's time limit: room for Ray Train to start its workers on 2 busy cores
TRAIN_TITLES = ("ray::RayTrainWorker", "ray::TrainController")  # Ray Train's processes, by their title


def ddp_train(ctx):
    """Every rank: all-reduce the ranks (1 + ... + world_size) and, each step, a loss that differs
    by rank, so the curve shows whose reports it holds. settings: sleep (seconds a step),
    raise_on_rank (that rank raises after its first step)."""
    import torch
    import torch.distributed as dist

    (ctx.trial_dir / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    assert dist.is_initialized() == (ctx.world_size > 1)  # a one-worker trial runs as it always did
    all_reduce = dist.all_reduce if ctx.world_size > 1 else lambda tensor: None
    ranks = torch.tensor([float(ctx.rank + 1)])
    all_reduce(ranks)
    final = synthetic_loss(ctx.params["lr"], 0.02, ctx.width, ctx.base_width, ctx.seed)
    for step in range(1, STEPS + 1):
        time.sleep(ctx.settings.get("sleep", 0))
        all_reduce(torch.zeros(1))  # in step with the other ranks
        ctx.report(step, train_loss=final + 0.5**step + 0.1 * ctx.rank)
        if ctx.rank == ctx.settings.get("raise_on_rank"):
            raise RuntimeError(f"rank {ctx.rank} gives up")
    return {"final_loss": final + ctx.rank, "rank_sum": ranks.item(), "world": ctx.world_size}


DDP_TRAINABLE = f"""\
[trainable]
function = "tests.run.test_multiworker:ddp_train"
version = "1"
working_dir = '{ROOT}'
metrics = ["rank_sum", "world"]
"""


@pytest.fixture(scope="module")
def local_ray():
    """One private local Ray of 2 CPUs for the module: every sweep and dispatcher here joins it."""
    with Dispatcher(num_cpus=2) as dispatcher:
        yield dispatcher


def lr_spec(tmp_path: Path, resources: str, *, last_points: int = 3) -> Path:
    """A 16 -> 32 sweep of ddp_train over lr alone, 3 trials at level 0 and `last_points` (1 or 3)
    at level 1, no widening."""
    path = trainable_spec(tmp_path, DDP_TRAINABLE)
    spec = path.read_text().replace("num_cpus = 1\n", resources + "\n").replace(
        "min_points = 3\n", f"min_points = {last_points}\n")
    path.write_text(spec.replace("max_widenings = 1\n", "max_widenings = 0\nmax_shifts = 0\n"))
    return only_lr_axis(path, 3)


def _ddp_job(tmp_path: Path, name: str, *, max_retries: int = 0, lr: float = 0.01, num_cpus: float = 0.5,
             time_limit_s: float | None = None, **settings: float):
    """(job, trial directory) of one 2-worker ddp_train trial with `settings` (sleep: 1.5 s a step)."""
    trainable = Trainable.create("python", function="tests.run.test_multiworker:ddp_train", version="1",
                                 working_dir=str(ROOT), metrics=("rank_sum", "world"),
                                 settings={"sleep": 1.5, **settings})
    (tmp_path / name).mkdir()
    launcher = Launcher.for_sweep(trainable, tmp_path / name, None)
    config = load_spec(lr_spec(tmp_path, "")).trial_config(16, {"lr": lr}, 0)
    job = launcher.job(f"T-{name}", config.replace(num_threads=1), {"lr": lr}, Resources(num_cpus, 0, 2),
                       time_limit_s=time_limit_s, max_retries=max_retries)
    return job, tmp_path / name / "trials" / job.key


def train_processes() -> dict[int, str]:
    """pid -> title of the Ray Train processes (workers, controllers) under this test process."""
    found = {}
    for pid in descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(TRAIN_TITLES):
            found[pid] = title
    return found


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def cpus_free() -> bool:
    import ray

    return ray.available_resources().get("CPU", 0) == 2


# ------------------------------------------------------------------ the built-in GPT on 2 workers


def test_two_gpt_workers_train_what_one_worker_does(local_ray, tmp_path):
    """The same trial on one worker (run_trial here) and on 2 gloo workers through Ray Train, each
    training half of every global batch: the same curve to float tolerance."""
    from telescope.train.trial import run_trial

    spec = load_spec(write_spec(tmp_path, steps=6))
    config = spec.trial_config(32, {"lr": 0.01, "init_std": 0.02}, 0).replace(num_threads=1)
    one = run_trial(config)
    two = distributed_trial(config, workers=2, resources_per_worker=Resources(num_cpus=1))
    assert one.status == two.status == "completed" and two.steps_done == 6
    assert two.train_steps == one.train_steps and two.val_steps == one.val_steps
    assert two.train_loss == pytest.approx(one.train_loss, rel=1e-5, abs=1e-6)
    assert two.val_loss == pytest.approx(one.val_loss, rel=1e-5, abs=1e-6)
    assert two.tokens == one.tokens and two.flops == one.flops
    assert not (Path.home() / "ray_results").exists()


# ------------------------------------------------------------------ sweeps


def test_levels_of_one_and_four_workers_finish_on_two_cpus(local_ray, tmp_path):
    """workers = [1, 4] at half a CPU each on 2 CPUs: level 1's trial takes every CPU, its
    launcher none, so the sweep finishes; every rank ran (the all-reduced rank sum), rank 0's
    reports are the curve and its return value the result."""
    spec = lr_spec(tmp_path, "num_cpus = 0.5\nworkers = [1, 4]", last_points=1)
    sweep = Sweep.create(spec, tmp_path / "out")
    state = sweep.run(num_cpus=2, progress=Progress(quiet=True))
    assert state.complete and [level.width for level in state.levels] == [16, 32]
    trials = Ledger(sweep.directory).trials().sort_values("level")
    assert len(trials) == 4 and (trials["status"] == "completed").all(), trials[["status", "error"]]
    assert trials["workers"].tolist() == [1, 1, 1, 4] and (trials["nodes"] == 1).all()
    assert trials["rank_sum"].tolist() == [1, 1, 1, 10] and trials["world"].tolist() == [1, 1, 1, 4]
    assert (trials["attempt"] == 1).all()
    for row in trials.itertuples():
        assert row.final_loss == synthetic_loss(row.lr, 0.02, row.width, 16, 0)  # rank 0's result
    four = trials.iloc[-1]
    curve = Ledger(sweep.directory).curves().query("trial_id == @four.trial_id")
    assert curve["train_loss"].tolist() == pytest.approx([four["final_loss"] + 0.5**s for s in range(1, STEPS + 1)])
    trial_dir = sweep.directory / "trials" / four["trial_id"]
    assert sorted(p.name for p in trial_dir.glob("rank*.pid")) == [f"rank{r}.pid" for r in range(4)]
    context = json.loads((trial_dir / "context.json").read_text())
    assert (context["rank"], context["world_size"]) == (0, 4)
    assert (trial_dir / "ray-train").is_dir()  # Ray Train's storage, in the sweep directory
    wait_for(lambda: not train_processes() and cpus_free(), "Ray Train process gone and every CPU free", 30)


def test_the_ddp_sweep_records_and_shows_its_two_worker_level(local_ray, tmp_path):
    """sweeps/ddp.toml cut to two levels of 3 lr points: the last level's rows have 2 workers on
    one node, and `telescope status` (text and --json) shows them."""
    text = (ROOT / "sweeps" / "ddp.toml").read_text()
    assert "workers = [1, 1, 2]" in text and "calibration_width = 64" in text
    spec = tmp_path / "ddp.toml"
    spec.write_text(text.replace("calibration_width = 64", "calibration_width = 32")
                    .replace("workers = [1, 1, 2]", "workers = [1, 2]"))
    out = tmp_path / "out"
    Sweep.create(only_lr_axis(spec, 3), out).run(num_cpus=2, progress=Progress(quiet=True))
    trials = Ledger(out).trials()
    last = trials[trials["level"] == 1]
    assert len(last) == 3 and (last["status"] == "completed").all() and (last["workers"] == 2).all()
    assert (last["nodes"] == 1).all() and (trials[trials["level"] == 0]["workers"] == 1).all()
    status = run_cli("status", str(out))
    assert status.returncode == 0, status.stderr
    level_lines = [line for line in status.stdout.splitlines() if line.startswith("  level ")]
    assert level_lines[1].endswith("2 workers on 1 node") and "workers" not in level_lines[0], status.stdout
    shown = json.loads(run_cli("status", str(out), "--json").stdout)["levels"]
    assert [lv["workers"] for lv in shown] == [1, 2] and shown[1]["nodes"] == [1]
    assert {(t["workers"], t["nodes"]) for t in shown[1]["trials"]} == {(2, 1)}


def test_a_command_trial_holds_all_its_workers_resources_and_launches_its_ranks(local_ray, tmp_path):
    """A command's 2-worker trial is one task holding both workers' CPUs; {workers} tells it how
    many ranks to launch (here it only records the number)."""
    script = "import json, sys; json.dump(dict(final_loss=1.5, ranks=int(sys.argv[1])), open(sys.argv[2], 'w'))"
    trainable = Trainable.create("command", command=["{python}", "-c", script, "{workers}", "{result}"], version="1",
                                 working_dir=str(ROOT), metrics=("ranks",))
    launcher = Launcher.for_sweep(trainable, tmp_path, None)
    config = load_spec(lr_spec(tmp_path, "")).trial_config(16, {"lr": 0.01}, 0)
    job = launcher.job("T-command", config, {"lr": 0.01}, Resources(0.5, 0, 2), time_limit_s=None, max_retries=0)
    assert job.resources == Resources(1, 0)  # 2 x half a CPU, in one ordinary task
    outcomes = []
    local_ray.run([job], outcomes.append)
    row = outcome_record("T-command", outcomes[0], axes={"lr": 0.01}, columns={"level": 0, "width": 16, "seed": 0},
                         metrics=("ranks",), workers=2).row
    assert row["status"] == "completed", row["error"]
    assert (row["final_loss"], row["ranks"], row["workers"], row["nodes"]) == (1.5, 2, 2, 1)
    context = json.loads((tmp_path / "trials" / "T-command" / "context.json").read_text())
    assert (context["rank"], context["world_size"]) == (0, 2)


# ------------------------------------------------------------------ what does not fit, and older ledgers


def test_bad_workers_stop_plan_and_run_in_one_line(tmp_path):
    spec = write_spec(tmp_path, resources="workers = [1, 0]")
    for command in (("plan", str(spec)), ("run", str(spec), "--out", str(tmp_path / "out"), "--num-cpus", "2")):
        result = run_cli(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [
            "telescope: error: resources.workers: must be a whole number of worker processes per trial >= 1 "
            "(e.g. 2; num_cpus and num_gpus are then per worker); got 0"]
    assert not (tmp_path / "out").exists()


def test_more_workers_than_the_cluster_holds_is_one_config_error(local_ray, tmp_path):
    """4 one-CPU workers on 2 CPUs: refused before anything runs, naming resources.workers."""
    job, _ = _ddp_job(tmp_path, "big", num_cpus=1)
    big = type(job)(job.key, job.fn, job.arg, Resources(1, 0, 4))
    with pytest.raises(ConfigError) as err:
        local_ray.run([big], lambda outcome: None)
    assert err.value.field == "resources.workers" and str(err.value).startswith(
        "resources.workers: no live node can run the 4 workers of a job asking for 1 CPU and 0 GPU each: the live "
        "nodes hold 2 such workers at once"), str(err.value)
    assert local_ray.capacity(Resources(0.5, 0, 4)) == 1 and local_ray.capacity(Resources(0.5, 0, 2)) == 2


def test_a_ledger_from_before_workers_reads_one_worker_and_unknown_nodes(tmp_path):
    import pyarrow.parquet as pq

    from telescope.store.files import write_table
    from tests.store.helpers import result

    def record(trial_id: str, **columns):
        return trial_record(trial_id, result(), axes={"lr": 1e-3},
                            columns={"level": 0, "width": 64, "seed": 0, **columns})

    ledger = Ledger(tmp_path)
    ledger.append([record("old")])
    (part,) = (tmp_path / "trials.parquet").glob("part-*.parquet")
    write_table(pq.read_table(part).drop_columns(["workers", "nodes", "optimizer_flops"]), part)  # two versions ago
    old = Ledger(tmp_path)
    assert old.append([record("new", workers=2, nodes=2)]) == ["new"]
    for reader in (old, Ledger(tmp_path)):
        rows = reader.trials().set_index("trial_id")
        assert rows.loc["old", "workers"] == 1 and pd.isna(rows.loc["old", "nodes"])
        assert (rows.loc["new", "workers"], rows.loc["new", "nodes"]) == (2, 2)
    assert old.compact() == 2
    rows = Ledger(tmp_path).trials().set_index("trial_id")
    assert rows["workers"].tolist() == [1, 2] and pd.isna(rows.loc["old", "nodes"]) and rows.loc["new", "nodes"] == 2


# ------------------------------------------------------------------ faults


def test_a_killed_worker_restarts_its_group_up_to_max_retries(local_ray, tmp_path):
    """SIGKILL rank 1 of two running 2-worker trials: with max_retries 1, Ray Train starts the
    group again and the trial completes at attempt 2; with max_retries 0 it is recorded failed
    with the dead rank as the reason. A rank that raises fails its trial with its own error."""
    jobs = [_ddp_job(tmp_path, "retry", max_retries=1), _ddp_job(tmp_path, "no-retry", lr=0.005)]
    raises, _ = _ddp_job(tmp_path, "raises", lr=0.02, sleep=0, raise_on_rank=1)
    killed: dict[str, tuple[int, str]] = {}

    def kill_rank_1() -> None:
        deadline = time.monotonic() + 180
        pending = {job.key: trial_dir / "rank1.pid" for job, trial_dir in jobs}
        while pending and time.monotonic() < deadline:
            for key, marker in list(pending.items()):
                if marker.exists() and marker.read_text():
                    pid = int(marker.read_text())
                    time.sleep(1)  # mid-trial: past the first all-reduce
                    killed[key] = (pid, Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
                    os.kill(pid, signal.SIGKILL)
                    del pending[key]
            time.sleep(0.1)

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    outcomes = {}
    local_ray.run([*(job for job, _ in jobs), raises], lambda o: outcomes.setdefault(o.key, o))
    killer.join()
    assert set(killed) == {"T-retry", "T-no-retry"}
    assert all(title.startswith("ray::RayTrainWorker") for _, title in killed.values()), killed
    rows = {key: outcome_record(key, o, axes={"lr": 0.01}, columns={"level": 0, "width": 16, "seed": 0}, workers=2).row
            for key, o in outcomes.items()}
    retried, failed, raised = rows["T-retry"], rows["T-no-retry"], rows["T-raises"]
    assert retried["status"] == "completed", retried["error"]
    assert retried["attempt"] == 2 and retried["rank_sum"] == 3 and retried["workers"] == 2 and retried["nodes"] == 1
    assert int((jobs[0][1] / "rank1.pid").read_text()) != killed["T-retry"][0]  # a new rank 1 finished it
    assert failed["status"] == "failed" and failed["workers"] == 2 and failed["attempt"] == 1
    assert failed["error"].startswith("rank 1: its worker process died (") and \
        failed["error"].endswith("(worker group started 1 time)"), failed["error"]
    assert raised["status"] == "failed" and raised["error"].startswith(
        "rank 1: RuntimeError: rank 1 gives up (test_multiworker.py:"), raised["error"]
    wait_for(lambda: not train_processes() and cpus_free(), "Ray Train process gone and every CPU free", 30)


def test_a_time_limit_stops_every_worker_and_frees_their_cpus(local_ray, tmp_path):
    """A 2-worker trial past its time limit: recorded as timed out, none of its Ray Train
    processes left, and the placement group that held its workers' CPUs released, so the next
    2-worker trial, which needs both CPUs, runs."""
    hang, hang_dir = _ddp_job(tmp_path, "hang", num_cpus=1, time_limit_s=LIMIT_S, sleep=1000)
    after, _ = _ddp_job(tmp_path, "next", num_cpus=1, lr=0.02, sleep=0, time_limit_s=150)  # a bound, were it stuck
    outcomes = []
    seen: dict[int, str] = {}

    def watch() -> None:
        while len(outcomes) < 1:
            seen.update(train_processes())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    local_ray.run([hang, after], outcomes.append)
    watcher.join()
    assert [o.key for o in outcomes] == ["T-hang", "T-next"]
    assert outcomes[0].failure == "timeout" and outcomes[0].error == f"timed out after {LIMIT_S} s"
    assert outcomes[1].ok and outcomes[1].value.result.status == "completed"
    ranks = {int((hang_dir / f"rank{r}.pid").read_text()) for r in (0, 1)}
    assert ranks <= set(seen), (ranks, seen)  # the hanging trial's workers were seen running
    wait_for(lambda: not train_processes() and cpus_free(), "Ray Train process gone and every CPU free", 30)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)
