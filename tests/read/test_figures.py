"""The report's figures and text, fit for a paper, on sweeps whose noise is known
(tests/read/ledgers.py): a sampler level drawn as its samples inside its search box, weight decay 0
labelled 0, the optimum's star beside its cell's number, slice panels that join only points with
the same values of the other axes, colour scales that state the seed noise, fits that draw no
prediction they cannot back, and bands inside each axis's valid range."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox

from telescope.core.noise import level_noises
from telescope.read.report import make_report
from telescope.read.report.figures import (
    _centres, _edges, _nearest_index, _transfer_panels, draw_drift, draw_level_grid, draw_loss_vs_width, draw_transfer,
)
from telescope.read.report.numbers import level_summaries, point_losses
from telescope.read.status import sweep_status
from telescope.state import sweep_state
from tests.read.ledgers import build

PAIR = ("lr", "weight_decay")


@pytest.fixture(scope="module")
def report(noisy, tmp_path_factory):
    return make_report(noisy, tmp_path_factory.mktemp("report"), coordcheck=False)


def inputs(out):
    spec, ledger, state = sweep_state(out)
    trials = ledger.trials()
    points = point_losses(trials, spec.axis_names)
    return spec, state, points, level_summaries(spec, state, trials, points, level_noises(state.levels))


def rendered(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_a_sampler_level_is_drawn_as_its_samples_inside_its_search_box(tmp_path):
    out = build(tmp_path, sampler='["grid", "tpe", "tpe"]')
    spec, state, points, summaries = inputs(out)
    s = summaries[1]
    assert s.samples and s.shape == "9 tpe samples in a 3x3 box"
    ax = draw_level_grid(spec, state, points, s, PAIR).axes[0]
    assert "3x3 grid" not in ax.get_title() and "9 tpe samples in a 3x3 box" in ax.get_title()
    (x0, x1), (y0, y1) = (state.levels[1].grid.box()[n] for n in PAIR)
    (box,) = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_label().startswith("search box")]
    assert (box.get_x(), box.get_y()) == (pytest.approx(x0), pytest.approx(y0))
    assert (box.get_width(), box.get_height()) == (pytest.approx(x1 - x0), pytest.approx(y1 - y0))
    (samples,) = [c for c in ax.collections if c.get_label() == "samples"]
    xy = samples.get_offsets()
    assert len(xy) == 9
    assert np.all((xy[:, 0] >= x0 * (1 - 1e-9)) & (xy[:, 0] <= x1 * (1 + 1e-9)))
    assert np.all((xy[:, 1] >= y0 - 1e-12) & (xy[:, 1] <= y1 + 1e-12))
    assert not [p for p in ax.patches if p.get_hatch()]  # no grid cells, so none "not run yet"


def test_weight_decay_zero_is_labelled_zero(one_seed):
    spec, state, points, summaries = inputs(one_seed)
    at_zero = [s for s in summaries if state.levels[s.level].grid.axis("weight_decay").at(0) == 0.0]
    # a grid shifted onto weight decay 0: midway between its cell edges is float dust, not 0
    assert any(_centres(_edges(state.levels[s.level].grid.axis("weight_decay")), None)[0] != 0.0 for s in at_zero)
    for s in at_zero:
        fig = draw_level_grid(spec, state, points, s, PAIR)
        rendered(fig)
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels[0] == "0" and not any("e-" in label for label in labels), labels
    titles = [title for title, _ in _transfer_panels(spec, state, points, "lr")]
    assert "weight_decay ≈ 0" in titles and not any("e-" in t for t in titles)


def test_the_optimums_star_leaves_its_cells_number_readable(tmp_path):
    # noise-free, the optimum exactly on a grid point: the star sits at its cell's centre,
    # where the cell's number used to be written
    out = build(tmp_path, sigma=0.0, lr_opt=0.01)
    spec, state, points, summaries = inputs(out)
    for s in summaries:
        fig = draw_level_grid(spec, state, points, s, PAIR)
        renderer = rendered(fig)
        ax = fig.axes[0]
        (star,) = [line for line in ax.lines if line.get_marker() == "*"]
        cx, cy = ax.transData.transform(np.column_stack(star.get_data()))[0]
        half = star.get_markersize() * fig.dpi / 72 / 2
        star_box = Bbox.from_extents(cx - half, cy - half, cx + half, cy + half)
        texts = [t.get_window_extent(renderer) for t in ax.texts]
        assert any(abs((b.x0 + b.x1) / 2 - cx) < 2 and b.y0 - 4 * half < cy < b.y1 + 4 * half for b in texts), \
            "the starred cell's number is drawn"
        assert not [b for b in texts if b.overlaps(star_box)], s.level


def test_slice_panels_join_only_points_with_the_same_values_of_the_other_axes(noisy):
    spec, state, points, _ = inputs(noisy)
    base = state.levels[0].grid.axis("weight_decay")
    keys = points["weight_decay"].map(lambda v: _nearest_index(base, v))
    per_slice = points.assign(key=keys).groupby(["key", "level"])["weight_decay"].nunique()
    assert (per_slice >= 2).any(), "a narrowed level puts two weight decays near one base value"
    panels = _transfer_panels(spec, state, points, "lr")
    assert len(panels) > 1
    for _, rows in panels[1:]:
        assert rows.groupby("level")["weight_decay"].nunique().max() == 1
    fig = draw_transfer(spec, state, points)
    for ax in fig.axes[1:len(panels)]:
        labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
        assert labels and all(" at weight_decay=" in label for label in labels)


def test_each_heatmaps_colour_scale_states_the_seed_noise(noisy, one_seed):
    spec, state, points, summaries = inputs(noisy)
    status = sweep_status(noisy)
    for s, lv in zip(summaries, status["levels"]):
        label = draw_level_grid(spec, state, points, s, PAIR).axes[1].get_ylabel()  # the colour bar
        assert "mean over 2 seeds" in label and f"seed noise σ = {lv['noise']['sigma']:.2g}" in label
    spec, state, points, summaries = inputs(one_seed)
    label = draw_level_grid(spec, state, points, summaries[0], PAIR).axes[1].get_ylabel()
    assert "mean over 1 seed;" in label and "one seed; noise σ ≈" in label


def test_a_fit_with_no_degree_of_freedom_is_drawn_only_where_it_interpolates(report):
    assert report.loss_fit.dof == 0
    ax = draw_loss_vs_width(report).axes[0]
    widths = [s.width for s in report.levels]
    curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
    assert curves and all(max(c.get_xdata()) <= max(widths) * (1 + 1e-9) for c in curves)
    assert not [line for line in ax.lines if line.get_marker() == "D"]  # no predicted point
    assert any("exact interpolation, no prediction" in t.get_text() for t in ax.get_legend().get_texts())


def test_drift_bands_stay_in_the_valid_range_and_the_target_says_where_it_came_from(noisy, report):
    spec, state, _, _ = inputs(noisy)
    fig = draw_drift(spec, state.levels, report)
    wd = fig.axes[spec.axis_names.index("weight_decay")]
    for collection in wd.collections:
        for path in collection.get_paths():
            assert path.vertices[:, 1].min() >= -1e-12
    legend = [t.get_text() for t in wd.get_legend().get_texts()]
    assert any("calibration optimum: no drift measured" in t for t in legend), legend


def test_the_reports_text_carries_the_noise_and_no_prediction_it_cannot_back(noisy, report):
    text = report.markdown.read_text()
    assert "an exact interpolation, not a prediction" in text and "Predicted loss" not in text
    assert "nan" not in text.lower()
    assert "weight_decay: no measurable effect at this horizon" in text
    assert "is not significantly non-zero" in text and "calibration optimum" in text
    status = sweep_status(noisy)
    for s, lv in zip(report.levels, status["levels"]):
        assert s.best_loss == pytest.approx(lv["best_loss"]) and s.best_loss_std == pytest.approx(lv["best_loss_std"])
        assert s.noise.axes["lr"].text() in text
