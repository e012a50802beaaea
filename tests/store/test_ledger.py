"""The ledger: real Parquet files, real subprocesses, real SIGKILLs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from telescope.core.contract import TrialResult
from telescope.errors import ConfigError, LedgerError, TelescopeError
from telescope.store.directory import load_sweep_dir, open_sweep_dir
from telescope.store.ledger import CURVES_DIR, TRIALS_DIR, Ledger
from telescope.store.lock import lock_holder, SweepLock
from telescope.store.records import CORE_SCHEMA, NULLABLE, trial_record
from tests.store.helpers import damage_file, result

REPO = Path(__file__).resolve().parents[2]
SPEC = 'name = "demo"\n[axes]\nlr = [1e-3, 2e-3]\n'


def record(trial_id: str, loss: float = 2.5, lr: float = 1e-3, **columns):
    status = columns.pop("status", "completed")
    error = columns.pop("error", None)
    return trial_record(
        trial_id, result(loss, status, error), axes={"lr": lr, "weight_decay": 0},
        columns={"level": 0, "width": 64, "seed": 0, **columns},
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under root (hidden ones too), with each file's content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def test_round_trip_with_axis_columns(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.append([record("a", 2.5, lr=1e-3, node="n1", gpu_ids="0,1", point_id="p0", sampler_trial=7)]) == ["a"]
    assert ledger.append([record("b", 9.0, lr=2e-3, status="diverged", error="loss exploded"),
                          record("c", 3.0, lr=4e-3, status="failed", error="OOM", attempt=2)]) == ["b", "c"]

    df = Ledger(tmp_path).trials()  # a fresh reader, as `status` would be
    assert list(df.columns) == [*CORE_SCHEMA.names, "lr", "weight_decay"]
    assert list(df.trial_id) == ["a", "b", "c"]
    a = df.iloc[0]
    assert (a.status, a.final_loss, a.tokens, a.node, a.gpu_ids, a.point_id, a.sampler_trial) == (
        "completed", 2.5, 2**40, "n1", "0,1", "p0", 7
    )
    assert a.lr == 1e-3 and a.weight_decay == 0.0 and df.weight_decay.dtype == np.float64
    assert df.finished_at.dt.tz is not None and (pd.Timestamp.now(tz="UTC") - df.finished_at).max() < pd.Timedelta("1min")
    # only a completed trial has a final loss; the diverged one keeps its last loss in its curve
    assert np.isnan(df.final_loss.iloc[1]) and df.error.iloc[1] == "loss exploded"
    assert df.attempt.tolist() == [1, 1, 2] and pd.isna(df.sampler_trial.iloc[1])
    assert Ledger(tmp_path).axes() == ["lr", "weight_decay"]
    assert Ledger(tmp_path).recorded_ids() == {"a", "b", "c"}

    curves = Ledger(tmp_path).curves()
    assert list(curves.columns) == ["trial_id", "step", "train_loss", "val_loss"]
    a_curve = curves[curves.trial_id == "a"]
    assert a_curve.step.tolist() == [0, 10, 20]
    assert a_curve.train_loss.tolist() == [5.0, 3.0, 2.4]
    assert np.isnan(a_curve.val_loss.iloc[0]) and a_curve.val_loss.iloc[2] == 2.5
    # plain pandas reads the dataset directories too
    assert len(pd.read_parquet(tmp_path / TRIALS_DIR)) == 3 and len(pd.read_parquet(tmp_path / CURVES_DIR)) == 9


def test_appending_a_recorded_trial_is_a_no_op(tmp_path):
    Ledger(tmp_path).append([record("a", 2.5)])
    assert Ledger(tmp_path).append([record("a", 7.0), record("b")]) == ["b"]
    assert Ledger(tmp_path).append([record("a"), record("b")]) == []
    assert Ledger(tmp_path).trials().final_loss.tolist() == [2.5, 2.5]
    with pytest.raises(ValueError, match="appears twice") as err:  # a caller's bug, not a user's input
        Ledger(tmp_path).append([record("x"), record("x")])
    assert not isinstance(err.value, TelescopeError)


def test_empty_ledger_has_the_core_columns_and_dtypes(tmp_path):
    df = Ledger(tmp_path / "nothing-yet").trials()
    assert len(df) == 0 and list(df.columns) == CORE_SCHEMA.names
    assert df.level.dtype == np.int64 and df.final_loss.dtype == np.float64
    assert str(df.sampler_trial.dtype) == "Int64" and str(df.finished_at.dtype) == "datetime64[us, UTC]"
    curves = Ledger(tmp_path).curves()
    assert len(curves) == 0 and list(curves.columns) == ["trial_id", "step", "train_loss", "val_loss"]
    assert Ledger(tmp_path).recorded_ids() == set() and Ledger(tmp_path).axes() == []


def test_parts_share_one_schema_whatever_is_null(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append([record("ok")])  # error, point_id, sampler_trial all null in this part
    ledger.append([record("bad", status="failed", error="boom", point_id="p1", sampler_trial=3)])
    parts = sorted((tmp_path / TRIALS_DIR).iterdir())
    assert len(parts) == 2
    assert pq.read_schema(parts[0]).equals(pq.read_schema(parts[1]), check_metadata=True)
    direct = pd.read_parquet(tmp_path / TRIALS_DIR)  # no Ledger in between
    assert direct.error.tolist()[1] == "boom" and pd.isna(direct.error.tolist()[0])
    assert Ledger(tmp_path).trials().dtypes.equals(ledger.trials().iloc[:0].dtypes)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: record("x", level=3.5), "level"),
        (lambda: record("x", level=None), "level"),
        (lambda: record("x", status="running"), "status"),
        (lambda: record("x", finished_at=dt.datetime(2025, 1, 1)), "finished_at"),
        (lambda: record("x", tokens=5), "tokens"),  # the result's own column
        (lambda: trial_record("x", result(), axes={"level": 1.0}, columns={"level": 0, "width": 64, "seed": 0}), "level"),
        (lambda: trial_record("", result(), axes={}, columns={"level": 0, "width": 64, "seed": 0}), "trial_id"),
        (lambda: trial_record("x", TrialResult(**{**result().to_dict(), "val_steps": [2.5]}), axes={},
                              columns={"level": 0, "width": 64, "seed": 0}), "val_loss"),
        (lambda: trial_record("x", TrialResult(**{**result().to_dict(), "train_loss": [1.0]}), axes={},
                              columns={"level": 0, "width": 64, "seed": 0}), "train_loss"),
    ],
)
def test_bad_records_are_refused_naming_the_field(build, field):
    # Records are built by telescope's own drivers: a bad one is a bug (ValueError / TypeError).
    with pytest.raises((ValueError, TypeError)) as err:
        build()
    assert not isinstance(err.value, TelescopeError)
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)


def test_columns_are_fixed_by_the_first_trial(tmp_path):
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError, match="^budget: .*type cannot be fixed"):
        ledger.append([record("a", budget=None)])
    assert not any(tmp_path.rglob("*"))
    ledger.append([record("a", budget=3)])
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="^extra: is not a column of this sweep"):
        Ledger(tmp_path).append([record("b", budget=3, extra=1)])
    with pytest.raises(TypeError, match="^budget: .*whole number"):
        Ledger(tmp_path).append([record("b", budget=3.5)])
    other_axes = trial_record("b", result(), axes={"lr": 1.0}, columns={"level": 0, "width": 64, "seed": 0})
    with pytest.raises(ValueError, match="axes are") as err:
        Ledger(tmp_path).append([other_axes])
    assert not isinstance(err.value, TelescopeError)
    assert snapshot(tmp_path) == before
    ledger.append([record("c")])  # an extra column may be left out: stored as null
    assert ledger.trials().budget.tolist()[0] == 3 and pd.isna(ledger.trials().budget.tolist()[1])


def test_curves_only_for_committed_trials_and_temp_files_ignored(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append([record("a", 2.5)])
    # A writer killed after its curves part but before its trials part: curves for a trial that
    # was never committed ("ghost") and a second curve for "a".
    other = Ledger(tmp_path / "other")
    other.append([record("ghost"), record("a", 9.0)])
    orphan = next((other.curves_dir).iterdir()).name.replace("part-000000", "part-000005")
    shutil.copy(next(other.curves_dir.iterdir()), tmp_path / CURVES_DIR / orphan)
    # And a torn temporary file from a killed write, in both directories.
    for d in (TRIALS_DIR, CURVES_DIR):
        (tmp_path / d / ".part-000006-0badc0de.parquet.1234abcd.tmp").write_bytes(b"PAR1 torn")

    curves = Ledger(tmp_path).curves()
    assert set(curves.trial_id) == {"a"} and curves.train_loss.tolist() == [5.0, 3.0, 2.4]
    assert pd.read_parquet(tmp_path / TRIALS_DIR).trial_id.tolist() == ["a"]  # pandas skips .tmp too
    # the next part is numbered past the orphan, so a name is never reused
    assert ledger.append([record("b")]) == ["b"]
    assert sorted(p.name[:11] for p in (tmp_path / TRIALS_DIR).glob("part-*")) == ["part-000000", "part-000007"]
    assert set(Ledger(tmp_path).curves().trial_id) == {"a", "b"}


def copy_part_as(src: Ledger, dst: Ledger, counter: int) -> None:
    """Put src's only part into dst under a later part number, as a lost-then-retried write would."""
    for sub in (TRIALS_DIR, CURVES_DIR):
        (part,) = (src.path / sub).iterdir()
        shutil.copy(part, dst.path / sub / part.name.replace("part-000000", f"part-{counter:06d}"))


def test_duplicate_ids_collapse_to_the_first_part(tmp_path):
    ledger = Ledger(tmp_path / "sweep")
    ledger.append([record("a", 2.5), record("b", 3.5)])
    retry = Ledger(tmp_path / "retry")
    retry.append([record("a", 9.0), record("z", 4.0)])
    copy_part_as(retry, ledger, 3)

    df = Ledger(ledger.path).trials()
    assert df.trial_id.tolist() == ["a", "b", "z"] and df.final_loss.tolist() == [2.5, 3.5, 4.0]
    curves = Ledger(ledger.path).curves()
    assert curves.groupby("trial_id").size().to_dict() == {"a": 3, "b": 3, "z": 3}
    assert curves[curves.trial_id == "a"].val_loss.iloc[-1] == 2.5  # the curve of the kept row


def test_compact_folds_parts_and_readers_never_see_duplicates(tmp_path):
    ledger = Ledger(tmp_path / "sweep")
    for i in range(6):
        ledger.append([record(f"t{i}", 2.0 + i, lr=1e-3 * (i + 1))])
    retry = Ledger(tmp_path / "retry")
    retry.append([record("t0", 99.0)])
    copy_part_as(retry, ledger, 9)  # a superseded duplicate of t0 in the last part
    trials, curves = ledger.trials(), ledger.curves()
    shutil.copytree(ledger.path, tmp_path / "template")

    assert ledger.compact() == 7 and ledger.n_parts() == 1
    assert len(list((ledger.path / CURVES_DIR).iterdir())) == 1
    pd.testing.assert_frame_equal(Ledger(ledger.path).trials(), trials)
    pd.testing.assert_frame_equal(Ledger(ledger.path).curves(), curves)
    assert Ledger(ledger.path).axes() == ["lr", "weight_decay"]
    assert ledger.compact() == 0
    ledger.append([record("t9")])
    assert Ledger(ledger.path).trials().trial_id.tolist() == [*trials.trial_id, "t9"]


def test_compaction_killed_after_any_deletion_reads_the_same(tmp_path, monkeypatch):
    template = Ledger(tmp_path / "template")
    for i in range(4):
        template.append([record(f"t{i}", 2.0 + i)])
    retry = Ledger(tmp_path / "retry")
    retry.append([record("t0", 99.0)])
    copy_part_as(retry, template, 9)  # must never resurface, whichever old parts survive
    want_trials = template.trials().sort_values("trial_id").reset_index(drop=True)
    want_curves = template.curves().sort_values(["trial_id", "step"]).reset_index(drop=True)

    real_unlink = Path.unlink
    for deletions in range(2 * template.n_parts()):  # die before the 1st, 2nd, ... deletion
        sweep = Ledger(shutil.copytree(template.path, tmp_path / f"crash-{deletions}"))
        budget = [deletions]

        def unlink(self, missing_ok=False):
            if budget[0] == 0:
                raise KeyboardInterrupt("killed mid-compaction")
            budget[0] -= 1
            real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", unlink)
        with pytest.raises(KeyboardInterrupt):
            sweep.compact()
        monkeypatch.setattr(Path, "unlink", real_unlink)
        for reader in (Ledger(sweep.path), Ledger(sweep.path)):
            pd.testing.assert_frame_equal(reader.trials().sort_values("trial_id").reset_index(drop=True), want_trials)
            pd.testing.assert_frame_equal(
                reader.curves().sort_values(["trial_id", "step"]).reset_index(drop=True), want_curves
            )
            reader.compact()  # a later compaction finishes the job
        assert sweep.n_parts() == 1


# ----------------------------------------------------------------------------- sweep directories


def test_open_sweep_dir_creates_then_reuses(tmp_path):
    out = tmp_path / "runs" / "demo"
    ledger = open_sweep_dir(out, SPEC, "fp-1", "demo")
    ledger.append([record("a")])
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["format"] == 1 and meta["spec_fingerprint"] == "fp-1" and meta["name"] == "demo"
    assert (out / "spec.toml").read_text() == SPEC
    before = snapshot(out)

    again = open_sweep_dir(out, "# same spec, other comments\n" + SPEC, "fp-1", "demo")
    assert again.recorded_ids() == {"a"} and snapshot(out) == before  # the stored spec is kept
    loaded, spec_text, loaded_meta = load_sweep_dir(out)
    assert spec_text == SPEC and loaded_meta == meta and loaded.recorded_ids() == {"a"}
    (tmp_path / "empty-existing").mkdir()
    assert open_sweep_dir(tmp_path / "empty-existing", SPEC, "fp-2", "x").recorded_ids() == set()
    # a creation cut short under the lock (spec.toml written, sweep.json not yet) is finished
    cut_short = tmp_path / "cut-short"
    cut_short.mkdir()
    (cut_short / ".lock").write_text("")
    (cut_short / "spec.toml").write_text("half")
    open_sweep_dir(cut_short, SPEC, "fp-3", "x")
    assert load_sweep_dir(cut_short)[1] == SPEC


def test_refusals_leave_every_file_byte_identical(tmp_path):
    sweep = tmp_path / "sweep"
    open_sweep_dir(sweep, SPEC, "fp-1", "demo").append([record("a")])
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    a_file = tmp_path / "file.toml"
    a_file.write_text("x")
    before = snapshot(tmp_path)

    cases = [
        (lambda: open_sweep_dir(sweep, SPEC, "fp-2", "demo"), "another spec (fingerprint fp-1, this spec fp-2)"),
        (lambda: open_sweep_dir(foreign, SPEC, "fp-1", "demo"), "not a sweep directory"),
        (lambda: open_sweep_dir(a_file, SPEC, "fp-1", "demo"), "is a file"),
        (lambda: SweepLock(foreign).__enter__(), "not a sweep directory"),
        (lambda: load_sweep_dir(tmp_path / "missing"), "does not exist"),
        (lambda: load_sweep_dir(foreign), "not a sweep directory"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            call()
        assert "\n" not in str(err.value)
        assert snapshot(tmp_path) == before, message
    assert "telescope resume" in str(pytest.raises(ConfigError, open_sweep_dir, sweep, SPEC, "fp-2", "d").value)

    # A damaged sweep.json is the directory's fault, not the input's: LedgerError naming the file.
    for corrupt, message in (("{not json", "unreadable"), ('{"format": 1}', "corrupt"),
                             (json.dumps({**json.loads((sweep / "sweep.json").read_text()), "format": 2}), "format 2"),
                             (b"\xff\xfe\x00", "not UTF-8"), ("", "unreadable")):
        getattr(sweep / "sweep.json", "write_bytes" if isinstance(corrupt, bytes) else "write_text")(corrupt)
        before = snapshot(tmp_path)
        for call in (lambda: load_sweep_dir(sweep), lambda: open_sweep_dir(sweep, SPEC, "fp-1", "demo")):
            with pytest.raises(LedgerError, match=message) as err:
                call()
            assert err.value.path == str(sweep / "sweep.json") and "\n" not in str(err.value)
            assert snapshot(tmp_path) == before
    (sweep / "sweep.json").write_text(json.dumps({"format": 1, "spec_fingerprint": "fp-1", "name": "demo",
                                                  "created_at": "now", "telescope_version": "0"}))
    (sweep / "spec.toml").unlink()
    with pytest.raises(LedgerError, match=r"unreadable \(No such file or directory\); restore the sweep's spec") as err:
        load_sweep_dir(sweep)
    assert err.value.path == str(sweep / "spec.toml")


# ----------------------------------------------------------------------------- lock and crashes

HOLD_LOCK = """
import sys
from telescope.store.lock import SweepLock
with SweepLock(sys.argv[1]):
    print("ready", flush=True)
    sys.stdin.readline()  # hold the lock until killed, or until the test goes away
"""

APPEND_FOREVER = """
import sys, time
from telescope.core.contract import TrialResult
from telescope.store.ledger import Ledger
from telescope.store.records import trial_record
ledger, tag = Ledger(sys.argv[1]), sys.argv[2]
res = TrialResult(status="completed", final_loss=2.5, final_train_loss=2.4, tokens=1000, flops=1e9,
                  wall_time_s=1.0, device="cpu", steps_done=20, n_params=100, train_steps=[0, 10, 20],
                  train_loss=[5.0, 3.0, 2.4], val_steps=[20], val_loss=[2.5])
print("ready", flush=True)
if sys.stdin.readline() != "go\\n":  # imports done ahead of time; EOF: the test went away
    sys.exit()
i, deadline = 0, time.monotonic() + 60  # never outlive a test that forgot to kill it
while time.monotonic() < deadline:
    ledger.append([trial_record(f"{tag}-{i}-{j}", res, axes={"lr": 1e-3 * (i + 1), "weight_decay": 0.0},
                                columns={"level": 0, "width": 64, "seed": j}) for j in range(2)])
    if i == 0:
        print("appending", flush=True)
    i += 1
"""


def spawn(code: str, *args: str, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if wait:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_lock_refuses_a_second_controller_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "sweep"
    holder = spawn(HOLD_LOCK, str(out))
    try:
        with pytest.raises(ConfigError) as err:
            with SweepLock(out):
                pass
        message = str(err.value)
        assert f"pid {holder.pid} on {socket.gethostname()} since" in message
        assert message.startswith(f"{out}: is in use by another telescope controller") and "\n" not in message
        assert lock_holder(out).startswith(f"pid {holder.pid} on {socket.gethostname()} since")  # for `status`
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(out) is None and lock_holder(tmp_path / "no-such-dir") is None
    with SweepLock(out):  # the kernel dropped the dead holder's lock: nothing stale to clean up
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
        open_sweep_dir(out, SPEC, "fp-1", "demo")
    with SweepLock(out):  # released on exit
        pass


def test_sigkill_mid_append_never_leaves_a_torn_ledger(tmp_path):
    ledger_dir = tmp_path / "sweep"
    rng = random.Random(1234)
    # Five writers, one after another on the same directory, each on top of the leftovers of the
    # last; started together so that their imports overlap.
    writers = [spawn(APPEND_FOREVER, str(ledger_dir), f"k{kill}", wait=False) for kill in range(5)]
    try:
        for kill, writer in enumerate(writers):
            assert writer.stdout.readline() == "ready\n"
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "appending\n"  # its first part is committed
            time.sleep(rng.uniform(0.0, 0.1))
            writer.send_signal(signal.SIGKILL)
            writer.wait()

            ledger = Ledger(ledger_dir)
            trials, curves = ledger.trials(), ledger.curves()
            assert len(trials) == 2 * ledger.n_parts() and trials.trial_id.is_unique
            required = [c for c in CORE_SCHEMA.names if c not in NULLABLE]
            assert not trials[required].isna().any().any()
            assert curves.groupby("trial_id").size().reindex(trials.trial_id).eq(3).all()
            assert set(curves.trial_id) == set(trials.trial_id)
            assert len(pd.read_parquet(ledger_dir / TRIALS_DIR)) == len(trials)  # plain readers too
            assert ledger.append([record(f"after-kill-{kill}-{j}") for j in range(2)]) == [
                f"after-kill-{kill}-0", f"after-kill-{kill}-1"
            ]
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert ledger.n_parts() >= 10  # each writer committed at least one part before its kill


# ----------------------------------------------------------------------------- damaged parts

DAMAGES = ("truncated", "garbage", "zero-byte", "corrupt pages")


def three_batches(root: Path) -> Ledger:
    ledger = Ledger(root)
    for i in range(3):
        ledger.append([record(f"t{i}-{j}", 2.0 + i, lr=1e-3 * (i + 1), seed=j) for j in range(2)])
    return ledger


def middle(ledger: Ledger, sub: str) -> Path:
    return sorted((ledger.path / sub).iterdir())[1]


def raises_naming(path: Path, read) -> LedgerError:
    """`read(Ledger(DIR))` raises a one-line LedgerError naming the damaged part `path` of DIR."""
    with pytest.raises(LedgerError) as err:
        read(Ledger(path.parents[1]))
    message = str(err.value)
    assert err.value.path == str(path) and message.startswith(f"{path}: ") and "\n" not in message
    assert f"run 'telescope resume {path.parents[1]}' to set it aside" in message
    return err.value


@pytest.mark.parametrize("sub", [TRIALS_DIR, CURVES_DIR])
@pytest.mark.parametrize("how", DAMAGES)
def test_every_read_names_the_damaged_part_and_changes_nothing(tmp_path, sub, how):
    ledger = three_batches(tmp_path / "sweep")
    bad = middle(ledger, sub)
    damage_file(bad, how)
    before = snapshot(tmp_path)
    footer_ok = how == "corrupt pages"  # only reads of the data itself can tell
    readers = {"curves": lambda r: r.curves(), "compact": lambda r: r.compact()}
    if sub == TRIALS_DIR or not footer_ok:  # trial rows need their curves parts' footers sound
        readers |= {"trials": lambda r: r.trials(), "recorded_ids": lambda r: r.recorded_ids(),
                    "append": lambda r: r.append([record("new")])}
    if sub == TRIALS_DIR and not footer_ok:
        readers["axes"] = lambda r: r.axes()
    for name, read in readers.items():
        err = raises_naming(bad, read)
        assert ("empty file" if how == "zero-byte" else "not a readable Parquet file") in err.message, name
        assert snapshot(tmp_path) == before, name
    if sub == CURVES_DIR and footer_ok:  # what does not read the curves is not blocked by them
        assert len(Ledger(ledger.path).trials()) == 6 and Ledger(ledger.path).axes() == ["lr", "weight_decay"]


@pytest.mark.parametrize("sub", [TRIALS_DIR, CURVES_DIR])
@pytest.mark.parametrize("how", DAMAGES)
def test_quarantine_sets_the_pair_aside_and_the_rest_reads(tmp_path, sub, how):
    ledger = three_batches(tmp_path / "sweep")
    name = middle(ledger, TRIALS_DIR).name
    originals = {s: (ledger.path / s / name).read_bytes() for s in (TRIALS_DIR, CURVES_DIR)}
    damage_file(ledger.path / sub / name, how)
    originals[sub] = (ledger.path / sub / name).read_bytes()
    # a file of that name set aside before (say, by an earlier resume) is never overwritten
    clash = ledger.path / "quarantine" / f"trials-{name}"
    clash.parent.mkdir()
    clash.write_bytes(b"set aside before")

    writer = ledger  # the writer that recorded every batch, so it knows their ids and schema
    moved = writer.quarantine_unreadable()
    damaged, partner = (TRIALS_DIR, CURVES_DIR) if sub == TRIALS_DIR else (CURVES_DIR, TRIALS_DIR)
    assert [m.source for m in moved] == [ledger.path / damaged / name, ledger.path / partner / name]
    trials_target = ledger.path / "quarantine" / f"trials-{name.removesuffix('.parquet')}.1.parquet"
    curves_target = ledger.path / "quarantine" / f"curves-{name}"
    targets = {TRIALS_DIR: trials_target, CURVES_DIR: curves_target}
    assert [m.target for m in moved] == [targets[damaged], targets[partner]]
    for m, s in zip(moved, (damaged, partner)):
        assert m.target.read_bytes() == originals[s] and not m.source.exists()
        # the ids come from whichever file of the pair reads (the curves part of a lost trials part)
        assert m.trial_ids == ("t1-0", "t1-1")
        assert m.note() == (f"set aside {m.source} into {ledger.path / 'quarantine'}/: {m.reason}; "
                            "its 2 trials (t1-0, t1-1) will run again")
    assert ("empty file" if how == "zero-byte" else "not a readable Parquet file") in moved[0].reason
    assert moved[1].reason in ("the curves of the damaged trials part", "its curves part is damaged")
    assert clash.read_bytes() == b"set aside before"

    for reader in (writer, Ledger(ledger.path)):
        assert reader.recorded_ids() == {"t0-0", "t0-1", "t2-0", "t2-1"}
        assert set(reader.curves().trial_id) == {"t0-0", "t0-1", "t2-0", "t2-1"}
    assert writer.append([record("t1-0", lr=2e-3), record("t1-1", lr=2e-3, seed=1)]) == ["t1-0", "t1-1"]
    assert Ledger(ledger.path).quarantine_unreadable() == []
    assert Ledger(ledger.path).compact() == 3 and len(Ledger(ledger.path).trials()) == 6


def test_a_part_of_another_sweep_is_named_and_set_aside_whatever_its_number(tmp_path):
    ledger = three_batches(tmp_path / "sweep")
    other = Ledger(tmp_path / "other")  # other axes: another sweep's ledger
    other.append([trial_record("x", result(), axes={"lr": 1e-3, "beta2": 0.9},
                               columns={"level": 0, "width": 64, "seed": 0})])
    ledger.compact()  # the sweep's one part is numbered past the copy below
    (part,) = other.trials_dir.iterdir()
    stray = ledger.trials_dir / part.name
    shutil.copy(part, stray)
    before = snapshot(tmp_path)
    for read in (Ledger.trials, Ledger.curves, Ledger.recorded_ids, Ledger.axes, Ledger.compact):
        err = raises_naming(stray, read)
        assert "do not match the rest of this sweep's ledger" in err.message
    assert snapshot(tmp_path) == before

    (moved,) = Ledger(ledger.path).quarantine_unreadable()
    assert (moved.source, moved.target.name) == (stray, f"trials-{part.name}")
    assert moved.target.read_bytes() == part.read_bytes() and moved.trial_ids == ()  # not this sweep's trials
    assert moved.note().endswith("any of its trials the sweep needs will run again")
    assert len(Ledger(ledger.path).trials()) == 6


def test_quarantine_sets_aside_a_trials_part_left_without_its_curves(tmp_path):
    """The state a crash between quarantine's two moves would leave (curves moved, trials not)."""
    ledger = three_batches(tmp_path / "sweep")
    lone = middle(ledger, TRIALS_DIR)
    (ledger.curves_dir / lone.name).unlink()
    (moved,) = Ledger(ledger.path).quarantine_unreadable()
    assert (moved.source, moved.reason, moved.trial_ids) == (lone, "its curves part is missing", ("t1-0", "t1-1"))
    assert Ledger(ledger.path).recorded_ids() == {"t0-0", "t0-1", "t2-0", "t2-1"}


COMPACT_FOREVER = """
import sys, time
from telescope.core.contract import TrialResult
from telescope.store.ledger import Ledger
from telescope.store.records import trial_record
ledger = Ledger(sys.argv[1])
res = TrialResult(status="completed", final_loss=2.5, final_train_loss=2.4, tokens=1000, flops=1e9,
                  wall_time_s=1.0, device="cpu", steps_done=20, n_params=100, train_steps=[0, 10, 20],
                  train_loss=[5.0, 3.0, 2.4], val_steps=[20], val_loss=[2.5])
print("ready", flush=True)
i, deadline = 0, time.monotonic() + 60  # never outlive a test that forgot to kill it
while time.monotonic() < deadline:
    ledger.append([trial_record(f"c{i}", res, axes={"lr": 1e-3, "weight_decay": 0.0},
                                columns={"level": 0, "width": 64, "seed": 0})])
    ledger.compact()
    i += 1
"""


def test_reads_racing_a_compaction_retry_and_never_see_a_gap(tmp_path):
    """A part deleted by a compaction between listing and opening is read again, not reported."""
    out = tmp_path / "sweep"
    Ledger(out).append([record("first")])
    writer = spawn(COMPACT_FOREVER, str(out))
    try:
        seen, deadline = 0, time.monotonic() + 5
        while time.monotonic() < deadline:
            reader = Ledger(out)
            trials, curves = reader.trials(), reader.curves()
            assert trials.trial_id.is_unique and trials.trial_id.iloc[0] == "first"
            # read after the trials, so they may hold more, never less
            assert set(curves.trial_id) >= set(trials.trial_id) and reader.recorded_ids() >= set(trials.trial_id)
            assert curves.groupby("trial_id").size().eq(3).all()
            seen = max(seen, len(trials))
        assert seen > 10  # the writer went on compacting meanwhile
    finally:
        writer.kill()
        writer.wait()


def test_a_flipped_bit_in_a_parts_pages_is_named_or_harmless(tmp_path):
    """Parts carry page checksums: damage inside the data is an error, never a wrong value read."""
    ledger = Ledger(tmp_path / "sweep")
    ledger.append([record(f"t{i}", 2.0 + i, lr=1e-3 * (i + 1), seed=i) for i in range(4)])
    want = {TRIALS_DIR: ledger.trials(), CURVES_DIR: ledger.curves()}
    for sub, read in ((TRIALS_DIR, Ledger.trials), (CURVES_DIR, Ledger.curves)):
        part = next((ledger.path / sub).iterdir())
        data = part.read_bytes()
        pages = range(4, len(data) - 8 - int.from_bytes(data[-8:-4], "little"))  # magic .. footer
        named = 0
        tried = random.Random(sub).sample(pages, 80)
        for pos in tried:
            part.write_bytes(data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1:])
            try:
                got = read(Ledger(ledger.path))
            except LedgerError as err:
                assert err.path == str(part)
                named += 1
            else:
                pd.testing.assert_frame_equal(got, want[sub])
        part.write_bytes(data)
        assert named > len(tried) // 2, sub
