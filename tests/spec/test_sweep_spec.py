import copy
import dataclasses
import tomllib
from pathlib import Path

import pytest
import tomli_w

from telescope.core.contract import TrialConfig
from telescope.errors import ConfigError
from telescope.spec.sweep import AXIS_BOUNDS, Resources, load_spec, parse_spec

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def demo_dict():
    return tomllib.loads((SWEEPS / "demo.toml").read_text())


def test_demo_and_paper_specs_load():
    demo = load_spec(SWEEPS / "demo.toml")
    assert demo.widths == [32, 64, 128] and demo.target_width == 1024
    assert demo.axis_names == ("lr", "init_std") and demo.min_points == 3
    assert demo.fixed.data == "builtin:stdlib" and demo.resources == (Resources(1, 0),) * 3

    paper = load_spec(SWEEPS / "paper.toml")
    assert paper.widths == [256, 512, 1024, 2048]
    assert paper.axis_names == ("lr", "weight_decay")
    assert [a.points for a in paper.axes] == [8, 8] and paper.min_points == 3
    assert [r.num_gpus for r in paper.resources] == [0.25, 0.5, 1, 1]
    assert paper.fixed.vocab_size == 50304 and paper.samplers == ("grid",) * 4


@pytest.mark.parametrize("name", ["demo.toml", "paper.toml"])
def test_to_toml_round_trips(name):
    spec = load_spec(SWEEPS / name)
    again = parse_spec(tomllib.loads(spec.to_toml()))
    assert again == spec and again.fingerprint() == spec.fingerprint()


def test_fingerprint_follows_results_not_resources():
    base = demo_dict()
    fp = parse_spec(base).fingerprint()
    assert fp == load_spec(SWEEPS / "demo.toml").fingerprint() and len(fp) == 16

    def changed(edit):
        d = copy.deepcopy(base)
        edit(d)
        return parse_spec(d).fingerprint()

    # how trials run, what the sweep is called, and the export width do not change results
    assert changed(lambda d: d["resources"].update(num_cpus=2, num_gpus=1, time_limit_s=5)) == fp
    assert changed(lambda d: d["resources"].update(max_retries=0)) == fp
    assert changed(lambda d: d["resources"].update(workers=[1, 1, 2])) == fp
    assert changed(lambda d: d.update(name="renamed", target_width=2048)) == fp
    # spelling a default out, or an int for a float, changes nothing
    assert changed(lambda d: d["training"].update(val_frac=0.05, weight_decay=0.1)) == fp
    # what the trials compute does
    assert changed(lambda d: d["training"].update(steps=151)) != fp
    assert changed(lambda d: d["axes"]["lr"].update(high=0.2)) != fp
    assert changed(lambda d: d.update(seeds=2)) != fp
    assert changed(lambda d: d.update(calibration_width=256)) != fp
    assert changed(lambda d: d.update(sampler=["grid", "tpe", "tpe"])) != fp


def test_int_given_for_a_float_setting_is_the_same_trial():
    d = demo_dict()
    d["training"]["weight_decay"] = 0
    as_int = parse_spec(d)
    d["training"]["weight_decay"] = 0.0
    assert as_int.fixed.weight_decay == 0.0 and isinstance(as_int.fixed.weight_decay, float)
    assert as_int.fixed.fingerprint() == parse_spec(d).fixed.fingerprint()


def test_trial_config_expansion():
    spec = load_spec(SWEEPS / "demo.toml")
    cfg = spec.trial_config(128, {"lr": 0.01, "init_std": 0.02}, seed=3)
    assert isinstance(cfg, TrialConfig)
    assert (cfg.width, cfg.base_width, cfg.seed, cfg.lr, cfg.init_std) == (128, 32, 3, 0.01, 0.02)
    raw = tomllib.loads((SWEEPS / "demo.toml").read_text())
    model, training = raw["model"], raw["training"]
    assert (cfg.depth, cfg.head_dim, cfg.steps, cfg.seq_len, cfg.weight_decay) == (
        model["depth"], model["head_dim"], training["steps"], training["seq_len"], training["weight_decay"])
    assert cfg.data == "builtin:stdlib" and cfg.device == "cpu"
    with pytest.raises(ConfigError) as err:
        spec.trial_config(128, {"lr": -0.01, "init_std": 0.02}, seed=0)
    assert err.value.field == "axes.lr"
    with pytest.raises(ConfigError) as err:
        spec.trial_config(128, {"lr": 0.01}, seed=0)
    assert err.value.field == "axes"


def test_seed_lists_and_per_level_settings():
    d = demo_dict()
    d.update(seeds=[7, 11], sampler=["grid", "tpe", "qmc"])
    d["resources"]["num_gpus"] = [0.25, 0.5, 1]
    spec = parse_spec(d)
    assert spec.seeds == (7, 11) and spec.samplers == ("grid", "tpe", "qmc")
    assert [r.num_gpus for r in spec.resources] == [0.25, 0.5, 1]
    assert parse_spec(tomllib.loads(spec.to_toml())) == spec


def test_workers_per_level_and_the_ddp_spec():
    d = demo_dict()
    d["resources"]["workers"] = [1, 2, 4]
    spec = parse_spec(d)
    assert [r.workers for r in spec.resources] == [1, 2, 4] and spec.resources[2] == Resources(1, 0, 4)
    assert spec.to_dict()["resources"]["workers"] == [1, 2, 4]
    assert parse_spec(tomllib.loads(spec.to_toml())) == spec
    d["resources"]["workers"] = 2  # one number: every level
    assert [r.workers for r in parse_spec(d).resources] == [2, 2, 2]
    assert "workers" not in load_spec(SWEEPS / "demo.toml").to_dict()["resources"]  # one worker: as before
    ddp = load_spec(SWEEPS / "ddp.toml")
    assert ddp.widths == [16, 32, 64] and [a.points for a in ddp.axes] == [3, 3]
    assert ddp.resources == (Resources(0.5, 0, 1), Resources(0.5, 0, 1), Resources(0.5, 0, 2))
    assert ddp.fixed.batch_size % 2 == 0 and ddp.fixed.data == "builtin:stdlib"


def test_workers_are_for_sweeps_only():
    from telescope.spec.fields import read_resources

    with pytest.raises(ConfigError) as err:
        read_resources({"workers": 2}, 1)  # the compare study's [resources]
    assert err.value.field == "resources.workers" and "sweeps only" in err.value.message
    assert read_resources({"workers": 2}, 1, workers=True)[0] == (Resources(1, 0, 2),)


def test_sweepable_axes_are_trial_config_float_fields():
    types = {f.name: f.type for f in dataclasses.fields(TrialConfig)}
    assert all(types[name] == "float" for name in AXIS_BOUNDS)


def _set(path, value):
    def edit(d):
        *parents, key = path.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[key] = value

    return edit


def _drop(path):
    def edit(d):
        *parents, key = path.split(".")
        for p in parents:
            d = d[p]
        del d[key]

    return edit


def _both(first, second):
    def edit(d):
        first(d)
        second(d)

    return edit


BAD = [
    # missing
    (_drop("name"), "name"),
    (_drop("base_width"), "base_width"),
    (_drop("calibration_width"), "calibration_width"),
    (_drop("target_width"), "target_width"),
    (_drop("axes"), "axes"),
    (_set("axes", {}), "axes"),
    (_drop("axes.lr.low"), "axes.lr.low"),
    (_drop("axes.init_std.points"), "axes.init_std.points"),
    # unknown names (typo protection)
    (_set("axes.momentum", {"low": 0.8, "high": 0.99, "points": 3}), "axes.momentum"),
    (_set("axes.val_frac", {"low": 0.01, "high": 0.1, "points": 3}), "axes.val_frac"),
    (_set("seed", 1), "seed"),
    (_set("model.dept", 2), "model.dept"),
    (_set("training.stepz", 2), "training.stepz"),
    (_set("axes.lr.pionts", 5), "axes.lr.pionts"),
    (_set("resources.gpus", 1), "resources.gpus"),
    (_set("model", 3), "model"),
    # settings in the wrong place
    (_set("model.steps", 100), "model.steps"),
    (_set("training.depth", 4), "training.depth"),
    (_set("training.lr", 0.01), "training.lr"),
    (_set("training.width", 64), "training.width"),
    (_set("model.base_width", 64), "model.base_width"),
    (_set("training.seed", 1), "training.seed"),
    # axes
    (_set("axes.lr.low", 0.5), "axes.lr.low"),
    (_set("axes.lr.low", 0.1), "axes.lr.low"),
    (_set("axes.init_std.low", 0.0), "axes.init_std.low"),
    (_set("axes.lr.points", 0), "axes.lr.points"),
    (_set("axes.lr.points", 2.5), "axes.lr.points"),
    (_set("axes.lr.scale", "linear"), "axes.lr.scale"),
    (_set("axes.lr.scale", "ln"), "axes.lr.scale"),
    (_set("axes.lr.high", "big"), "axes.lr.high"),
    (_set("axes.warmup_frac", {"low": 0.1, "high": 1.5, "scale": "linear", "points": 3}),
     "axes.warmup_frac.high"),
    (_set("axes.weight_decay", {"low": -0.1, "high": 0.2, "scale": "linear", "points": 3}),
     "axes.weight_decay.low"),
    # widths
    (_set("calibration_width", 96), "calibration_width"),
    (_set("calibration_width", 16), "calibration_width"),
    (_set("target_width", 64), "target_width"),
    (_set("target_width", 1000), "target_width"),
    (_both(_set("base_width", 40), _set("calibration_width", 160)), "base_width"),  # head_dim 16
    (_set("base_width", 0), "base_width"),
    (_set("base_width", 32.0), "base_width"),
    # fixed settings, validated by TrialConfig and reported where they are set
    (_set("model.head_dim", 24), "base_width"),
    (_set("training.steps", 0), "training.steps"),
    (_set("model.depth", 2.5), "model.depth"),
    (_set("training.optimizer", "sgd"), "training.optimizer"),
    (_set("training.data", "tokens.bin"), "training.vocab_size"),
    # resources
    (_set("resources.num_gpus", 1.5), "resources.num_gpus"),
    (_set("resources.num_gpus", -1), "resources.num_gpus"),
    (_set("resources.num_gpus", [0.5, 1]), "resources.num_gpus"),
    (_set("resources.num_cpus", -2), "resources.num_cpus"),
    (_set("resources.num_cpus", 0), "resources.num_cpus"),
    (_set("resources.time_limit_s", 0), "resources.time_limit_s"),
    (_set("resources.max_retries", -1), "resources.max_retries"),
    (_set("resources.workers", 0), "resources.workers"),
    (_set("resources.workers", 1.5), "resources.workers"),
    (_set("resources.workers", "2"), "resources.workers"),
    (_set("resources.workers", True), "resources.workers"),
    (_set("resources.workers", [1, 2]), "resources.workers"),
    (_set("resources.workers", [1, 2, 0]), "resources.workers"),
    (_both(_set("resources.workers", 2), _set("resources.num_gpus", 0.5)), "resources.num_gpus"),
    # sweep settings
    (_set("sampler", "bayes"), "sampler"),
    (_set("sampler", ["grid", "tpe"]), "sampler"),
    (_set("sampler", ["grid", "tpe", "annealing"]), "sampler"),
    (_set("seeds", 0), "seeds"),
    (_set("seeds", []), "seeds"),
    (_set("seeds", [1, 1]), "seeds"),
    (_set("seeds", [-1]), "seeds"),
    (_set("min_points", 2), "min_points"),
    (_set("min_points", 7), "axes.lr.points"),
    (_set("max_widenings", -1), "max_widenings"),
    (_set("name", "my sweep/1"), "name"),
]


@pytest.mark.parametrize("edit, field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_names_the_field(edit, field):
    d = demo_dict()
    edit(d)
    with pytest.raises(ConfigError) as err:
        parse_spec(d)
    assert err.value.field == field
    text = str(err.value)
    assert text.startswith(f"{field}: ") and "\n" not in text and len(err.value.message) > 15


def test_messages_say_how_to_fix():
    cases = {
        "axes.momentum": (_set("axes.momentum", {"low": 0.8, "high": 0.99}), "lr, init_std, weight_decay"),
        "model.dept": (_set("model.dept", 2), "did you mean 'depth'"),
        "model.steps": (_set("model.steps", 100), "move it to [training]"),
        "resources.num_gpus": (_set("resources.num_gpus", 1.5), "fractional GPUs > 1"),
        "calibration_width": (_set("calibration_width", 96), "32, 64, 128, 256"),
    }
    for field, (edit, hint) in cases.items():
        d = demo_dict()
        edit(d)
        with pytest.raises(ConfigError, match=hint.replace("[", r"\[").replace("]", r"\]")) as err:
            parse_spec(d)
        assert err.value.field == field


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_spec(missing)
    assert err.value.field == str(missing) and "no such file" in err.value.message
    with pytest.raises(ConfigError) as err:
        load_spec(tmp_path)
    assert err.value.field == str(tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\nbase_width = \n')
    with pytest.raises(ConfigError) as err:
        load_spec(broken)
    assert err.value.field == str(broken) and "line 2" in err.value.message and "\n" not in str(err.value)


def test_max_shifts_and_centre_default_to_the_rule_that_follows_the_drift():
    d = demo_dict()
    d.pop("max_shifts"), d.pop("centre")
    spec = parse_spec(d)
    assert spec.max_shifts == 2 and spec.centre == "drift"
    d["max_shifts"], d["centre"] = 0, "previous"
    spec = parse_spec(d)
    assert spec.max_shifts == 0 and spec.centre == "previous"
    assert parse_spec(tomllib.loads(spec.to_toml())) == spec


@pytest.mark.parametrize("key, value", [("max_shifts", -1), ("max_shifts", 1.5), ("centre", "middle"),
                                        ("centre", 1)])
def test_bad_rule_settings_name_the_field(key, value):
    d = demo_dict()
    d[key] = value
    with pytest.raises(ConfigError) as err:
        parse_spec(d)
    assert err.value.field == key and "\n" not in str(err.value)
    if key == "centre":
        assert '"drift"' in err.value.message and '"previous"' in err.value.message


def test_the_papers_rule_keeps_the_fingerprint_it_had_before_the_new_settings():
    # Fingerprints computed by the code before max_shifts, centre, the spectral default and
    # ns_dtype existed (every Newton-Schulz then ran in bf16).
    assert load_spec(SWEEPS / "paper.toml").fingerprint() == "99e0e2596e662978"
    d = demo_dict()
    d.pop("max_shifts"), d.pop("centre")
    d["training"]["hidden_lr_rule"] = "adam-mup"
    d["training"]["ns_dtype"] = "bf16"
    legacy = copy.deepcopy(d)
    legacy |= {"max_shifts": 0, "centre": "previous"}
    assert parse_spec(legacy).fingerprint() == "db48266d6e94b840"
    # the new defaults change what the sweep runs, so they change the fingerprint
    assert parse_spec(d).fingerprint() != "db48266d6e94b840"
    assert parse_spec(legacy | {"max_shifts": 1}).fingerprint() != "db48266d6e94b840"
    assert parse_spec(legacy | {"centre": "drift"}).fingerprint() != "db48266d6e94b840"
    assert parse_spec(legacy | {"training": legacy["training"] | {"ns_dtype": "auto"}}).fingerprint() != "db48266d6e94b840"


def test_a_spec_copy_from_before_ns_dtype_replays_its_bf16_trials_under_their_ids(tmp_path):
    from telescope.core.contract import trial_id
    from telescope.spec.sweep import load_recorded_spec

    d = demo_dict()  # device = "cpu": "auto" Newton-Schulz now means fp32 there
    d["training"].pop("ns_dtype", None)
    old = tmp_path / "spec.toml"
    old.write_text(tomli_w.dumps(d))
    recorded = parse_spec(d | {"training": d["training"] | {"ns_dtype": "bf16"}}).fingerprint()
    spec = load_recorded_spec(old, recorded)
    assert spec.fixed.ns_dtype == "bf16" and spec.fingerprint() == recorded
    point = {a.name: a.low for a in spec.axes}
    then = spec.trial_config(spec.base_width, point, 0)
    assert then.resolved_ns_dtype == "bf16"
    # the id such a trial had before the field existed: its config's hash without the field
    assert trial_id(0, then) == trial_id(0, then.replace(ns_dtype="bf16"))
    today = load_recorded_spec(old, parse_spec(d).fingerprint())
    now = today.trial_config(today.base_width, point, 0)
    assert now.resolved_ns_dtype == "fp32" and trial_id(0, now) != trial_id(0, then)


def test_muon_defaults_to_the_spectral_hidden_lr_rule():
    assert TrialConfig().hidden_lr_rule == "spectral"
    d = demo_dict()
    d["training"].pop("hidden_lr_rule")
    assert parse_spec(d).fixed.hidden_lr_rule == "spectral"
    assert load_spec(SWEEPS / "paper.toml").fixed.hidden_lr_rule == "adam-mup"


def test_a_spec_copy_from_before_the_new_settings_is_read_as_the_rule_that_recorded_it(tmp_path):
    from telescope.spec.sweep import load_recorded_spec

    d = demo_dict()
    d.pop("max_shifts"), d.pop("centre"), d["training"].pop("hidden_lr_rule")
    old = tmp_path / "spec.toml"
    old.write_text(tomli_w.dumps(d))
    # what the directory's sweep.json holds: the fingerprint the earlier code gave this text
    recorded = parse_spec(d | {"max_shifts": 0, "centre": "previous",
                               "training": d["training"] | {"hidden_lr_rule": "adam-mup", "ns_dtype": "bf16"}}
                          ).fingerprint()
    spec = load_recorded_spec(old, recorded)
    assert (spec.max_shifts, spec.centre, spec.fixed.hidden_lr_rule) == (0, "previous", "adam-mup")
    assert spec.fingerprint() == recorded
    # a directory made today: the copy is read as it is
    today = load_recorded_spec(old, parse_spec(d).fingerprint())
    assert (today.max_shifts, today.centre, today.fixed.hidden_lr_rule) == (2, "drift", "spectral")
