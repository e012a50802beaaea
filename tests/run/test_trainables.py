"""A user's Python function as the trainable: a real sweep on a real local Ray, and the runner's
own rules (divergence, results that are not results) called directly."""

from __future__ import annotations

import math

import pytest

from telescope.api import Sweep
from telescope.core.scaling import group_values
from telescope.core.trainable import Trainable
from telescope.errors import ConfigError
from telescope.run.progress import Progress
from telescope.run.trainables import Launcher, run_trainable
from telescope.spec.sweep import load_spec
from telescope.state import plan_trial
from telescope.store.ledger import Ledger
from tests.sweep_helpers import ROOT, committed_parts
from tests.trainable_helpers import PYTHON_TRAINABLE, STEPS, synthetic_loss, trainable_spec

FAULTY = PYTHON_TRAINABLE + "\n[trainable.settings]\nraise_corner = true\ndiverge_corner = true\n"


@pytest.fixture(scope="module")
def python_sweep(tmp_path_factory):
    """Widths 16 -> 32, 3x3 each; at level 0 the high-lr corners raise and diverge."""
    tmp = tmp_path_factory.mktemp("python-trainable")
    spec_path = trainable_spec(tmp, FAULTY)
    sweep = Sweep.create(spec_path, tmp / "out")
    state = sweep.run(num_cpus=2, progress=Progress(quiet=True))
    return sweep, state


def test_a_python_trainable_sweeps_like_the_built_in_gpt(python_sweep):
    sweep, state = python_sweep
    assert state.complete and [level.width for level in state.levels] == [16, 32]
    trials = Ledger(sweep.directory).trials()
    assert len(trials) == 18 and trials["trial_id"].is_unique
    by_status = trials["status"].value_counts().to_dict()
    assert by_status == {"completed": 16, "diverged": 1, "failed": 1}
    done = trials[trials["status"] == "completed"]
    for row in done.itertuples():
        assert row.final_loss == synthetic_loss(row.lr, row.init_std, row.width, 16, row.seed)
        # the muP values the trainable received: hidden lr / sqrt(m) under Muon's spectral rule
        assert row.hidden_lr == pytest.approx(group_values(row.width / 16, row.lr, 0.1, row.init_std).lr["hidden"])
        assert row.tokens == STEPS * 64 and row.steps_done == STEPS
    failed = trials[trials["status"] == "failed"].iloc[0]
    assert "RuntimeError: synthetic failure at lr=0.03" in failed["error"]
    assert "trainable_helpers.py" in failed["error"] and math.isnan(failed["hidden_lr"])
    diverged = trials[trials["status"] == "diverged"].iloc[0]
    assert diverged["error"] == "loss 160 > 3 x initial 40 at step 2" and diverged["steps_done"] == 2
    curves = Ledger(sweep.directory).curves()
    one = curves[curves["trial_id"] == done["trial_id"].iloc[0]]
    assert one["step"].tolist() == list(range(1, STEPS + 1)) and one["val_loss"].notna().sum() == 1
    for trial in trials["trial_id"]:
        assert (sweep.directory / "trials" / trial / "context.json").is_file()
    assert state.optimum.point == pytest.approx({"lr": 0.01 * 2 ** -0.1, "init_std": 0.02}, rel=0.25)


def test_running_it_again_is_a_no_op_and_a_new_version_gets_new_ids(python_sweep):
    sweep, _ = python_sweep
    parts = committed_parts(sweep.directory)
    Sweep.open(sweep.directory).run(num_cpus=2, progress=Progress(quiet=True))  # complete: starts no Ray
    assert committed_parts(sweep.directory) == parts
    spec = sweep.spec
    bumped = load_spec(trainable_spec(sweep.directory.parent, FAULTY.replace('version = "1"', 'version = "2"'),
                                      name="bumped.toml"))
    point = {"lr": 0.003, "init_std": 0.01}
    assert plan_trial(spec, 0, 16, point, 0).trial_id != plan_trial(bumped, 0, 16, point, 0).trial_id
    assert bumped.fingerprint() != spec.fingerprint()  # so the old directory refuses it, too


def _task(tmp_path, function: str, metrics=()):
    trainable = Trainable.create("python", function=function, metrics=metrics)
    launcher = Launcher.for_sweep(trainable, tmp_path, None)
    spec = load_spec(trainable_spec(tmp_path, PYTHON_TRAINABLE))
    point = {"lr": 0.01, "init_std": 0.02}
    return launcher.target("T0", spec.trial_config(16, point, 0), point)


def test_a_divergence_the_function_swallows_is_still_a_divergence(tmp_path, monkeypatch):
    module = tmp_path / "swallow.py"
    module.write_text(
        "from telescope.core.trainable import TrialDiverged\n"
        "def train(ctx):\n"
        "    try:\n"
        "        ctx.report(1, train_loss=2.0)\n"
        "        ctx.report(2, train_loss=float('nan'))\n"
        "    except TrialDiverged:\n"
        "        pass\n"
        "    return {'final_loss': 1.0}\n"
        "def undeclared(ctx):\n"
        "    return {'final_loss': 1.0, 'accuracy': 0.9}\n")
    monkeypatch.chdir(tmp_path)
    fn, arg = _task(tmp_path, "swallow:train")
    result = fn(arg)
    assert result.status == "diverged" and result.error == "loss nan at step 2"
    fn, arg = _task(tmp_path, "swallow:undeclared")
    result = fn(arg)
    assert result.status == "failed" and "'accuracy' is neither a result field" in result.error
    assert result.error.startswith("swallow:undeclared returned no result")
    fn, arg = _task(tmp_path, "swallow:missing")
    with pytest.raises(ConfigError, match="has no 'missing'"):  # the dispatcher records it as failed
        run_trainable(arg)


def test_the_built_in_gpt_is_still_run_trial_on_the_config():
    from telescope.train.trial import run_trial

    spec = load_spec(ROOT / "sweeps" / "demo.toml")
    config = spec.trial_config(32, {"lr": 0.01, "init_std": 0.02}, 0)
    assert Launcher.for_sweep(spec.trainable, "/nonexistent", None).target("T", config, {}) == (run_trial, config)


@pytest.mark.parametrize("name", ["custom-python.toml", "custom-command.toml"])
def test_the_examples_train_a_few_steps(tmp_path, monkeypatch, name):
    """The README's examples, three steps of one trial each at the calibration width (the sweeps
    themselves take minutes): the code and the spec still fit the contract."""
    import tomllib

    from telescope.spec.preflight import preflight
    from telescope.spec.sweep import parse_spec

    monkeypatch.chdir(ROOT)  # working_dir = "." in the examples: the repository
    data = tomllib.loads((ROOT / "sweeps" / name).read_text())
    data["training"] |= {"steps": 3, "eval_interval": 3}
    spec = parse_spec(data)
    preflight(spec)
    point = {a.name: (a.low * a.high) ** 0.5 for a in spec.axes}
    config = spec.trial_config(spec.calibration_width, point, 0).replace(num_threads=1)
    fn, arg = Launcher.for_sweep(spec.trainable, tmp_path, None).target("T", config, point)
    result = fn(arg)
    assert result.status == "completed", result.error
    assert 2.0 < result.final_loss < 6.0 and result.steps_done == 3 and result.tokens > 0 and result.flops > 0
    assert result.train_steps == [1, 2, 3] and result.val_steps == [3]
    for metric in spec.trainable.metrics:
        assert math.isfinite(result.extra[metric])
