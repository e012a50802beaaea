"""The muP coordinate check on the real model, optimizers and corpus: muP flat in width, SP not,
and which Muon hidden-lr rule keeps the hidden layers' updates width-independent.

Thresholds come from measuring this exact check (widths 32..256, depth 2, seq 64, batch 8, lr 0.02,
4 steps, 2 seeds) for three seed pairs (0-1, 2-3, 4-5):
- muP + spectral rule: every |slope| at t >= 2 is <= 0.08, <= 0.05 at the last step.
- muP + adam-mup rule: the hidden modules' own-update slope is -0.49 .. -0.60 (theory: -0.5, the
  update shrinks as 1/sqrt(width)); mean |h_t| of the MLP drifts to slope -0.23 .. -0.24 by t = 4.
- SP: attn/mlp slopes 0.83 .. 1.25 in every metric and step, logits 0.51 .. 1.11.
"""

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from telescope.cli import main
from telescope.core.contract import COORDCHECK_DEFAULTS, TrialConfig
from telescope.train.coordcheck import LAYERS, METRIC_LAYERS, coord_check, figure
from telescope.errors import ConfigError

WIDTHS, STEPS, SEEDS = [32, 64, 128, 256], 4, 2
BASE = TrialConfig(**COORDCHECK_DEFAULTS, num_threads=1)  # one thread: tiny models, shared cores
LEARNING_STEPS = range(2, STEPS + 1)  # step 1 is mostly warm-up of the optimizers' state


@pytest.fixture(scope="module")
def check():
    return coord_check(BASE, WIDTHS, STEPS, SEEDS, hidden_lr_rules=("adam-mup", "spectral"))


def slope(check, metric, variant, layer, t):
    return check.spread(metric, variant, layer, t).slope


def test_shape_of_the_data(check):
    assert check.variants == ["mup/adam-mup", "mup/spectral", "sp"]
    assert check.widths == WIDTHS and check.optimizer == "muon" and check.lr == COORDCHECK_DEFAULTS["lr"]
    for metric, layers in METRIC_LAYERS.items():
        for variant in check.variants:
            assert set(check.values[metric][variant]) == set(layers)
            for layer in layers:
                v = np.array(check.values[metric][variant][layer])
                assert v.shape == (STEPS + 1, len(WIDTHS)) and np.all(np.isfinite(v))
                assert np.all(v[2:] > 0)
                if metric != "scale":
                    assert np.all(v[0] == 0)  # nothing has changed before the first step
    # the readout starts at init_std under both: a sum over m times more coordinates grows the
    # initial logits ~ sqrt(m) under SP, and muP's 1/m output multiplier turns that into ~ 1/sqrt(m)
    mup_logits = np.array(check.values["scale"]["mup/adam-mup"]["logits"][0])
    sp_logits = np.array(check.values["scale"]["sp"]["logits"][0])
    assert np.all(mup_logits > 0) and np.all(np.diff(mup_logits) < 0)
    assert mup_logits[-1] / mup_logits[0] == pytest.approx(8 ** -0.5, rel=0.3)  # widths 32 -> 256
    assert sp_logits[-1] / sp_logits[0] == pytest.approx(8 ** 0.5, rel=0.3)


def test_mup_spectral_rule_is_flat_in_every_layer_and_metric(check):
    for metric, layers in METRIC_LAYERS.items():
        for layer in layers:
            for t in LEARNING_STEPS:
                assert abs(slope(check, metric, "mup/spectral", layer, t)) < 0.15, (metric, layer, t)
            assert abs(slope(check, metric, "mup/spectral", layer, STEPS)) < 0.1, (metric, layer)
    summary = check.summary()
    assert all(summary[m]["mup/spectral"]["worst_abs_slope"] < 0.1 for m in METRIC_LAYERS)


def test_adam_mup_rule_shrinks_muon_hidden_updates_as_one_over_sqrt_width(check):
    for t in LEARNING_STEPS:
        for layer in ("attn", "mlp"):
            assert -0.7 < slope(check, "update", "mup/adam-mup", layer, t) < -0.35, (layer, t)
        # embeddings and readout use AdamW with the same rule in both variants: flat
        for layer in ("embedding", "logits"):
            assert abs(slope(check, "scale", "mup/adam-mup", layer, t)) < 0.1, (layer, t)
    # and the vanishing hidden updates show up in the activations themselves by the last step
    summary = check.summary()["scale"]
    assert summary["mup/adam-mup"]["worst_abs_slope"] > 0.15
    assert summary["mup/adam-mup"]["worst_abs_slope"] > 3 * summary["mup/spectral"]["worst_abs_slope"]


def test_sp_blows_up_with_width(check):
    for metric, layers in METRIC_LAYERS.items():
        for t in range(1, STEPS + 1):
            for layer in ("attn", "mlp"):
                assert slope(check, metric, "sp", layer, t) > 0.7, (metric, layer, t)
            assert slope(check, metric, "sp", "logits", t) > 0.4, (metric, t)
        assert check.summary()[metric]["sp"]["worst_abs_slope"] > 0.9
    assert check.spread("scale", "sp", "attn", STEPS).ratio > 5  # 32 -> 256: about 10x


def test_figure_legends_sit_beside_the_panels_not_on_them(check):
    fig = figure(check, max_steps_shown=1)  # one row per metric: every row places its legends alike
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert len(panels) == 3 * 3  # variants x metrics
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(legend.overlaps(panel) for panel in panels), ax.get_title()
        assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1, ax.get_title()
        assert fig.bbox.y0 <= legend.y0 and legend.y1 <= fig.bbox.y1, ax.get_title()


def test_api_rejects_bad_input():
    with pytest.raises(ConfigError, match="widths"):
        coord_check(BASE, [64, 64], STEPS, 1)
    with pytest.raises(ConfigError, match="seeds"):
        coord_check(BASE, WIDTHS, STEPS, 0)
    with pytest.raises(ConfigError, match="parameterizations"):
        coord_check(BASE, WIDTHS, STEPS, 1, parameterizations=("ntk",))
    with pytest.raises(ConfigError, match="hidden_lr_rule"):
        coord_check(BASE.replace(optimizer="adamw"), WIDTHS, STEPS, 1, hidden_lr_rules=("adam-mup", "spectral"))


def test_cli_writes_a_png(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "figs" / "coord.png"
    code = main(["coordcheck", "--widths", "64", "32", "--steps", "2", "--seeds", "1", "--hidden-lr-rule", "both",
                 "--num-threads", "1", "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "mup/adam-mup" in text and "mup/spectral" in text and "sp " in text and str(out) in text
    image = matplotlib.image.imread(out)
    # (3 metrics x steps 1, 2) rows of 2.4 inches at 80 dpi, RGBA; 3 columns of a 2.6-inch panel
    # and its legend
    assert image.shape[0] == 6 * 192 and image.shape[2] == 4 and image.shape[1] > 3 * 2.6 * 80
    assert image[..., :3].std() > 0.05  # something was drawn
    assert torch.get_num_threads() == threads  # the trial's torch settings are restored


def test_cli_json(capsys):
    code = main(["coordcheck", "--optimizer", "adamw", "--widths", "32", "64", "--steps", "2", "--seeds", "1",
                 "--num-threads", "1", "--json"])
    assert code == 0

    def no_nan(name):
        raise AssertionError(f"{name} is not JSON")

    out = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert out["optimizer"] == "adamw" and out["variants"] == ["mup", "sp"] and out["output"] is None
    assert out["widths"] == [32, 64] and out["layers"]["scale"] == list(LAYERS)
    assert len(out["values"]["update"]["mup"]["attn"]) == 3  # t = 0, 1, 2
    assert len(out["spreads"]["scale"]["sp"]["logits"]) == 2  # t = 1, 2
    assert isinstance(out["spreads"]["delta"]["mup"]["embedding"][0]["slope"], float)  # moved at t = 1
    assert set(out["summary"]) == set(METRIC_LAYERS)
    assert out["summary"]["scale"]["sp"]["worst_abs_slope"] > 0.5


@pytest.mark.parametrize("args, field", [
    (["--widths", "32", "48"], "width: must be a multiple of head_dim"),
    (["--steps", "0"], "steps: must be a positive"),
    (["--steps", "-3"], "steps: must be a positive"),
    (["--seeds", "0"], "seeds: must be a positive"),
    (["--widths", "64"], "widths: need at least two"),
    (["--optimizer", "adamw", "--hidden-lr-rule", "both"], "hidden_lr_rule: only Muon"),
    (["-o", "coord.jpeg"], "output: must end in .png"),
])
def test_cli_bad_input_is_one_line_exit_2(args, field, capsys):
    assert main(["coordcheck", "-o", "never.png", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err


def test_cli_unknown_optimizer_and_no_output(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["coordcheck", "--optimizer", "sgd", "--json"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--optimizer" in err
    assert main(["coordcheck"]) == 2
    assert "output: nothing to write" in capsys.readouterr().err
