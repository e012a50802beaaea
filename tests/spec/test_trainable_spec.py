"""The [trainable] table: parsing, what trial ids and the spec fingerprint cover, and the bad
input that `plan` and `run` refuse in one line before Ray starts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from telescope.core.contract import TrialConfig, trial_id
from telescope.errors import ConfigError
from telescope.spec.preflight import preflight
from telescope.spec.sweep import load_spec, parse_spec
from telescope.state import plan_trial
from tests.sweep_helpers import ROOT, run_cli, tree_digest
from tests.trainable_helpers import PYTHON_TRAINABLE, command_trainable, trainable_spec

POINT = {"lr": 0.003, "init_std": 0.01}


def spec_dict(tmp_path: Path, trainable: str = "") -> dict:
    return tomllib.loads(trainable_spec(tmp_path, trainable).read_text())


def first_id(spec) -> str:
    return plan_trial(spec, 0, spec.base_width, POINT, spec.seeds[0]).trial_id


def test_the_built_in_gpt_keeps_its_trial_ids_and_fingerprints(tmp_path):
    # A built-in trial's fingerprint is the one it had before trainables existed (pinned from
    # that code), and `trainable` = "" adds nothing to it.
    assert TrialConfig().fingerprint() == "5ed6758d89e46f71"
    assert TrialConfig(width=64, lr=0.01).fingerprint() == "24ddd854eefe64dd"
    assert TrialConfig(width=64, lr=0.01, trainable="x").fingerprint() != "24ddd854eefe64dd"
    absent = parse_spec(spec_dict(tmp_path))
    explicit = parse_spec(spec_dict(tmp_path, '[trainable]\nkind = "builtin"\n'))
    assert explicit == absent and explicit.fingerprint() == absent.fingerprint()
    assert first_id(explicit) == first_id(absent) == trial_id(0, absent.trial_config(16, POINT, 0))
    assert "trainable" not in absent.to_dict()


def test_a_users_trainable_is_in_every_trial_id_and_the_fingerprint(tmp_path):
    builtin = parse_spec(spec_dict(tmp_path))
    python = parse_spec(spec_dict(tmp_path, PYTHON_TRAINABLE))
    assert python.trainable.kind == "python" and python.trainable.function == "tests.trainable_helpers:train"
    assert python.trainable.metrics == ("hidden_lr",)
    assert first_id(python) != first_id(builtin) and python.fingerprint() != builtin.fingerprint()

    def variant(**changes):
        data = spec_dict(tmp_path, PYTHON_TRAINABLE)
        data["trainable"] |= changes
        return parse_spec(data)

    for changed in (variant(version="2"), variant(function="tests.trainable_helpers:other"),
                    variant(settings={"n_layers": 2})):
        assert first_id(changed) != first_id(python) and changed.fingerprint() != python.fingerprint()
    moved = variant(working_dir="elsewhere")  # where the code is, not what it computes
    assert first_id(moved) == first_id(python) and moved.fingerprint() == python.fingerprint()
    counted = variant(metrics=[])  # the ledger's columns differ, the trials do not
    assert first_id(counted) == first_id(python) and counted.fingerprint() != python.fingerprint()
    command = parse_spec(spec_dict(tmp_path, command_trainable()))
    assert command.trainable.kind == "command" and command.trainable.command[0] == "{python}"
    assert first_id(command) not in (first_id(python), first_id(builtin))


@pytest.mark.parametrize("trainable", [PYTHON_TRAINABLE, command_trainable(faults=True)])
def test_a_trainable_spec_round_trips_through_toml(tmp_path, trainable):
    spec = parse_spec(spec_dict(tmp_path, trainable))
    again = parse_spec(tomllib.loads(spec.to_toml()))
    assert again == spec and again.fingerprint() == spec.fingerprint()


@pytest.mark.parametrize("table, field, says", [
    ('kind = "docker"', "trainable.kind", "must be one of builtin, python, command"),
    ('functon = "m:f"', "trainable.functon", "did you mean 'function'?"),
    ('kind = "builtin"\nversion = "2"', "trainable.version", "the built-in GPT takes its settings from [model]"),
    ('function = "m:f"\ncommand = ["x"]', "trainable.command", "a python trainable has function"),
    ('function = "train.py"', "trainable.function", 'as "package.module:function"'),
    ('kind = "python"', "trainable.function", "missing; add it"),
    ('command = "python train.py"', "trainable.command", "must be a list of non-empty strings"),
    ('command = ["{python}", "--lr", "{lrr}"]', "trainable.command",
     "placeholder {lrr} in argument 3 ('{lrr}') names no field; did you mean {lr}?"),
    ('command = ["x", "{lr"]', "trainable.command", "write {{ and }} for a literal brace"),
    ('function = "m:f"\nversion = 1.5', "trainable.version", "must be a string"),
    ('function = "m:f"\nmetrics = ["final_loss"]', "trainable.metrics", "already a ledger column"),
    ('function = "m:f"\nmetrics = ["lr"]', "trainable.metrics", "already a ledger column"),
    ('function = "m:f"\n[trainable.settings]\nsteps = 3', "trainable.settings.steps", "already a field of every trial"),
    ('function = "m:f"\n[trainable.settings.nested]\na = 1', "trainable.settings.nested", "a string, number, boolean"),
])
def test_a_bad_trainable_table_names_the_field_and_the_fix(tmp_path, table, field, says):
    with pytest.raises(ConfigError) as err:
        parse_spec(tomllib.loads(trainable_spec(tmp_path, f"[trainable]\n{table}\n").read_text()))
    assert err.value.field == field and says in err.value.message


def test_the_trainable_identity_is_not_a_training_setting(tmp_path):
    data = spec_dict(tmp_path)
    data["training"]["trainable"] = "x"
    with pytest.raises(ConfigError, match="training.trainable: set by the .trainable. table"):
        parse_spec(data)


@pytest.mark.parametrize("table, says", [
    ('function = "tests.no_such_module:train"', "cannot import 'tests.no_such_module'"),
    ('function = "tests.trainable_helpers:no_such_function"', "has no 'no_such_function'"),
    ('function = "tests.trainable_helpers:STEPS"', "is a int, not a function"),
    ('function = "tests.trainable_helpers:train"\nworking_dir = "no/such/dir"', "is not a directory"),
    ('command = ["no-such-program-xyz", "{lr}"]', "program 'no-such-program-xyz' not found on PATH"),
    ('command = ["./no-such-script.sh"]', "not found under working_dir"),
    ('command = ["{python}", "{lr:d}"]', "its placeholders do not fill in"),
])
def test_a_trainable_that_cannot_be_reached_fails_preflight(tmp_path, table, says, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = load_spec(trainable_spec(tmp_path, f"[trainable]\n{table}\n"))
    with pytest.raises(ConfigError) as err:
        preflight(spec)
    assert err.value.field.startswith("trainable.") and says in err.value.message


def test_reachable_trainables_pass_preflight(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    for trainable in (PYTHON_TRAINABLE, command_trainable()):
        preflight(load_spec(trainable_spec(tmp_path, trainable)))


@pytest.mark.parametrize("table, field, says", [
    ('function = "tests.no_such_module:train"', "trainable.function", "cannot import"),
    ('command = ["no-such-program-xyz"]', "trainable.command", "not found on PATH"),
    ('command = ["{python}", "{lrr}"]', "trainable.command", "did you mean {lr}?"),
])
def test_plan_and_run_refuse_an_unreachable_trainable_before_ray(tmp_path, table, field, says):
    spec = trainable_spec(tmp_path, f"[trainable]\n{table}\n")
    out = tmp_path / "out"
    before = tree_digest(tmp_path)
    for command in (["plan", str(spec)], ["run", str(spec), "--out", str(out), "--num-cpus", "2"]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"telescope: error: {field}: ") and says in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and result.stdout == ""
    assert tree_digest(tmp_path) == before  # nothing written: no sweep directory, no trial directory
