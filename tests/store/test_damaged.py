"""A damaged sweep directory through the real CLI: one line and exit 2, never a traceback, and
`resume` (or `run` of the same spec) sets the damage aside and finishes the sweep.

Real sweeps on a real local Ray, real Parquet files damaged the way the world damages them (a
partial copy, a stray write, a full disk, another sweep's part copied in), real subprocesses.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from telescope.errors import LedgerError
from telescope.read.export import export
from telescope.read.status import sweep_status
from telescope.run.controller import resume_sweep
from telescope.run.progress import Progress
from telescope.store.ledger import CURVES_DIR, TRIALS_DIR, Ledger
from telescope.store.records import trial_record
from tests.sweep_helpers import raw_trials, run_cli, tree_digest, write_spec
from tests.store.helpers import damage_file, result


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    """One finished one-level sweep (its ledger compacted into a single part): spec, directory."""
    tmp = tmp_path_factory.mktemp("template")
    spec = write_spec(tmp, calibration_width=16)
    out = tmp / "out"
    finished = run_cli("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet")
    assert finished.returncode == 0, finished.stderr
    assert len(list((out / TRIALS_DIR).iterdir())) == 1
    return spec, out


def copy_of(template: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(template[1], tmp_path / "out"))


def only_part(out: Path, sub: str) -> Path:
    (part,) = (out / sub).iterdir()
    return part


def stray_part(out: Path, tmp_path: Path) -> Path:
    """A part of another sweep (other axes) copied into this one's trials, numbered before its own."""
    other = Ledger(tmp_path / "other")
    other.append([trial_record("L0-w16-s0-other", result(), axes={"lr": 1e-3, "beta2": 0.95},
                               columns={"level": 0, "width": 16, "seed": 0})])
    part = only_part(other.path, TRIALS_DIR)
    assert part.name < only_part(out, TRIALS_DIR).name
    return Path(shutil.copy(part, out / TRIALS_DIR / part.name))


def assert_one_line_exit_2(args: tuple[str, ...], names: Path) -> str:
    done = run_cli(*args)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"telescope: error: {names}: "), done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("how", "sub", "command"),
    [
        ("truncated", TRIALS_DIR, "resume"),  # a partial copy between volumes
        ("garbage", CURVES_DIR, "resume"),  # a stray tool overwrote the curves; the trials part is fine
        ("zero-byte", TRIALS_DIR, "run"),  # a full disk; `run` of the same spec carries on too
    ],
)
def test_a_damaged_part_is_named_in_one_line_and_resume_runs_its_trials_again(template, tmp_path, how, sub, command):
    spec, reference = template
    out = copy_of(template, tmp_path)
    bad = only_part(out, sub)
    damage_file(bad, how)
    damaged_bytes = bad.read_bytes()
    partner_sub = CURVES_DIR if sub == TRIALS_DIR else TRIALS_DIR
    partner_bytes = only_part(out, partner_sub).read_bytes()
    before = tree_digest(out)

    for args in (("status", str(out)), ("export", str(out)), ("status", str(out), "--json")):
        line = assert_one_line_exit_2(args, bad)
        assert f"run 'telescope resume {out}' to set it aside" in line
        assert tree_digest(out) == before  # readers never touch the directory

    args = ("resume", str(out)) if command == "resume" else ("run", str(spec), "--out", str(out))
    finished = run_cli(*args, "--num-cpus", "2")
    assert finished.returncode == 0, finished.stderr
    assert "Traceback" not in finished.stderr and "sweep complete" in finished.stdout
    # one line per file set aside, the damaged one first, saying which trials run again
    ids = sorted(Ledger(reference).recorded_ids())
    # their ids come from whichever file of the pair reads: a lost trials part's curves name its trials
    named = len(ids) if sub == CURVES_DIR else Ledger(reference).curves()["trial_id"].nunique()
    notes = [line for line in finished.stderr.splitlines() if line.startswith("set aside ")]
    quarantine = out / "quarantine"
    assert [n.split(" into ")[0] for n in notes] == [f"set aside {bad}", f"set aside {out / partner_sub / bad.name}"]
    for note in notes:
        assert f" into {quarantine}/: " in note and f"; its {named} trials (" in note and "will run again" in note
    # the damaged part and its partner wait in quarantine/, byte for byte
    prefix = {TRIALS_DIR: "trials", CURVES_DIR: "curves"}
    assert (quarantine / f"{prefix[sub]}-{bad.name}").read_bytes() == damaged_bytes
    assert (quarantine / f"{prefix[partner_sub]}-{bad.name}").read_bytes() == partner_bytes
    # every trial ran again, exactly once, to the same result (trials are deterministic here)
    after = raw_trials(out)
    assert after["trial_id"].is_unique and sorted(after["trial_id"]) == ids
    want = Ledger(reference).trials().set_index("trial_id")["final_loss"]
    np.testing.assert_array_equal(after.set_index("trial_id").loc[want.index, "final_loss"].values, want.values)
    assert export(out) == export(reference)
    assert run_cli("status", str(out)).returncode == 0


def test_a_part_of_another_sweep_is_named_and_set_aside_without_rerunning_anything(template, tmp_path):
    out = copy_of(template, tmp_path)
    stray = stray_part(out, tmp_path)
    stray_bytes = stray.read_bytes()
    before = tree_digest(out)
    for command in ("status", "export"):
        line = assert_one_line_exit_2((command, str(out)), stray)
        assert "do not match the rest of this sweep's ledger" in line
        assert tree_digest(out) == before

    finished = run_cli("resume", str(out), "--num-cpus", "2")
    assert finished.returncode == 0, finished.stderr
    (note,) = [line for line in finished.stderr.splitlines() if line.startswith("set aside ")]
    assert note.startswith(f"set aside {stray} into {out / 'quarantine'}/: ")
    assert note.endswith("any of its trials the sweep needs will run again")
    assert (out / "quarantine" / f"trials-{stray.name}").read_bytes() == stray_bytes
    assert tree_digest(out / TRIALS_DIR) == tree_digest(template[1] / TRIALS_DIR)  # the sweep's own part is kept
    assert export(out) == export(template[1])


def test_the_python_layer_raises_ledger_error_and_resume_notes_what_it_set_aside(template, tmp_path):
    """The same, below the CLI: status and export raise LedgerError; resume_sweep notes each move."""
    out = copy_of(template, tmp_path)
    stray = stray_part(out, tmp_path)
    for read in (sweep_status, export):
        with pytest.raises(LedgerError) as err:
            read(out)
        assert err.value.path == str(stray)
    shown = io.StringIO()
    state = resume_sweep(out, num_cpus=2, progress=Progress(stream=shown))
    assert state.complete
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith(f"set aside {stray} into {out / 'quarantine'}/: ")  # before anything runs
    assert sum(line.startswith("set aside ") for line in lines) == 1
    assert f"sweep 'tiny' is already complete in {out}" in lines
    assert resume_sweep(out, num_cpus=2, progress=Progress(stream=io.StringIO())).complete  # nothing left to set aside


@pytest.mark.parametrize("damaged", ['{"format": 1, "kind": "sweep", "spec_fing', "", "[]"])
def test_a_damaged_sweep_json_is_one_line_everywhere_and_nothing_changes(template, tmp_path, damaged):
    out = copy_of(template, tmp_path)
    (out / "sweep.json").write_text(damaged)
    before = tree_digest(out)
    for args in (("status", str(out)), ("export", str(out)), ("resume", str(out), "--num-cpus", "2")):
        line = assert_one_line_exit_2(args, out / "sweep.json")
        assert "restore it from a copy or start a new sweep" in line
        assert tree_digest(out) == before
