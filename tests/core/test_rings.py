"""Rings at every level, drift-aware centring and the bracketed flag, through the pure rule."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telescope.core.drift import drift_centres
from telescope.core.rule import Axis, Observation, narrow, simulate, telescoping_steps
from telescope.errors import ConfigError

LR = Axis("lr", 1e-3, 1e-1, "log", 5)
STD = Axis("init_std", 0.005, 0.08, "log", 5)
WIDTHS = [32, 64, 128, 256]


def drifting(lr_alpha=40.0, std_alpha=-20.0):
    """A quadratic bowl in scale space whose optimum drifts as u*(n) = u_inf - alpha/n: up in lr,
    down in init_std, far more per level than a 3x3 grid whose spacing halves can follow."""

    def loss(p, width, seed):
        a = math.log(p["lr"]) - (math.log(0.3) - lr_alpha / width)
        b = math.log(p["init_std"]) - (math.log(0.01) - std_alpha / width)
        return a * a + 0.5 * b * b + 0.2 * a * b

    return loss


def values(level):
    return [level.grid.axis_values(n) for n in ("lr", "init_std")]


def test_previous_centre_without_shifts_is_the_paper_rule_exactly():
    # The grids and optima the rule gave before rings and drift centring existed (computed with that
    # code, reprs kept): every narrowed level rides the drift's edge.
    result = simulate([LR, STD], WIDTHS, drifting(), min_points=3, max_widenings=2, max_shifts=0,
                      centre="previous")
    expected = [
        [(0.001, 0.00316227766017, 0.01, 0.0316227766017, 0.1, 0.316227766017), (0.005, 0.01, 0.02, 0.04, 0.08)],
        [(0.0483340461419, 0.085951439058, 0.15284567434), (0.0132104938542, 0.0186824595743, 0.0264209877085)],
        [(0.114618086109, 0.15284567434, 0.203822982546), (0.0111086569257, 0.0132104938542, 0.0157100132841)],
        [(0.176503431166, 0.203822982546, 0.23537110831), (0.0101866833154, 0.0111086569257, 0.012114076277)],
    ]
    assert [values(lv) for lv in result.levels] == expected
    assert dict(result.optimum.point) == {"lr": 0.23537110831, "init_std": 0.0110009749134}
    assert [lv.bracketed for lv in result.levels] == [True, False, False, False]
    assert result.levels[1].unbracketed == {"lr": "high", "init_std": "low"}
    # the advice names what would help a later level, never the base range it does not use
    advice = [n for lv in result.levels[1:] for n in lv.notes if "not bracketed" in n]
    assert advice and all('larger max_shifts (now 0) or centre = "drift"' in n for n in advice)
    assert not any("axes.lr.high" in n for lv in result.levels[1:] for n in lv.notes)


@settings(max_examples=30, deadline=None)
@given(st.floats(-30, 30), st.floats(-30, 30), st.floats(0.3, 3.0))
def test_previous_centre_narrows_on_the_previous_optimum(lr_alpha, std_alpha, curvature):
    def loss(p, width, seed):
        d = np.array([math.log(p["lr"]) - math.log(0.03) + lr_alpha / width,
                      math.log(p["init_std"]) - math.log(0.02) + std_alpha / width])
        return float(np.sum(np.log1p(curvature * d**2)))

    result = simulate([LR, STD], WIDTHS, loss, min_points=3, max_shifts=0, centre="previous")
    for prev, lv in zip(result.levels, result.levels[1:]):
        assert lv.grid == narrow(prev.grid, prev.optimum.point, 2, 3)  # one step per level, no ring


def test_rings_at_later_levels_follow_the_drift_and_reuse_every_point():
    gen = telescoping_steps([LR, STD], WIDTHS, min_points=3, max_widenings=2, max_shifts=2, centre="previous")
    loss = drifting()
    steps, step = [], next(gen)
    try:
        while True:
            steps.append(step)
            step = gen.send([Observation(p, 0, loss(p, step.width, 0)) for p in step.points])
    except StopIteration as done:
        result = done.value
    level1 = [s for s in steps if s.level == 1]
    assert len(level1) == 2  # the 3x3 grid, then one ring on the high-lr and low-init_std sides
    first, ring = level1
    # the ring's grid holds the old points with bit-identical values, and asks only for the new ones
    old = first.grid.points()
    assert all(p in ring.grid.points() for p in old)
    assert all(ring.grid.index_of(p) is not None for p in old)
    assert ring.grid.axis_values("lr")[:3] == first.grid.axis_values("lr")
    assert ring.grid.axis_values("init_std")[1:] == first.grid.axis_values("init_std")
    assert len(ring.points) == ring.grid.n_points - first.grid.n_points == 7
    assert not any(p in old for p in ring.points)
    assert "adding a ring to" in ring.note
    for lv in result.levels:  # every point of a level ran once: the rings reused the results
        points = {tuple(o.point.values()) for o in lv.observations}
        assert len(points) == len(lv.observations) == lv.grid.n_points
    assert all(lv.bracketed for lv in result.levels)
    # a ring extends the range, not the resolution: the next level narrows from 3 points
    assert all(g.count - g.rings == 3 for lv in result.levels[1:] for g in lv.grid.axes)


def test_max_shifts_caps_the_rings_and_the_note_says_what_helps():
    result = simulate([LR, STD], WIDTHS, drifting(200.0, -100.0), min_points=3, max_shifts=1, centre="drift")
    capped = [lv for lv in result.levels[1:] if not lv.bracketed]
    assert capped, "a drift this steep outruns one ring"
    for lv in capped:
        assert max(g.rings for g in lv.grid.axes) <= 1 and lv.grid.widened == 1
        notes = [n for n in lv.notes if "not bracketed" in n]
        assert notes and all("larger max_shifts (now 1)" in n and "centre" not in n for n in notes)


def test_an_edge_at_the_valid_bound_counts_as_bracketed():
    wd = Axis("weight_decay", 0.0, 0.2, "linear", 5, bounds=(0.0, math.inf))

    def loss(p, width, seed):  # best at weight decay 0, the end of its valid range
        return (math.log(p["lr"] / 0.01)) ** 2 + 10 * p["weight_decay"]

    result = simulate([LR, wd], WIDTHS[:3], loss, min_points=3)
    assert all(lv.optimum.on_edge["weight_decay"] == "low" for lv in result.levels)
    assert all(lv.bracketed for lv in result.levels)
    assert all(lv.grid.axis("weight_decay").rings == 0 for lv in result.levels)


def test_default_rule_brackets_where_the_papers_rule_rides_the_edge():
    paper = simulate([LR, STD], WIDTHS, drifting(), min_points=3, max_shifts=0, centre="previous")
    new = simulate([LR, STD], WIDTHS, drifting(), min_points=3)
    assert not paper.levels[-1].bracketed and all(lv.bracketed for lv in new.levels)
    truth = np.array([math.log(0.3) - 40 / 256, math.log(0.01) + 20 / 256])

    def error(opt):
        return np.abs(np.log([opt.point["lr"], opt.point["init_std"]]) - truth)

    spacing = np.array([new.levels[-1].grid.spacing(n) for n in ("lr", "init_std")])
    assert (error(new.optimum) < spacing / 2).all()
    assert not (error(paper.optimum) < spacing / 2).all()


# ---- drift-aware centring -----------------------------------------------------------------------


def _bowl_drifting(alpha):
    def loss(p, width, seed):  # an exact quadratic: the refined optimum is the truth at each width
        return (math.log(p["lr"]) - (math.log(0.02) - alpha / width)) ** 2 + (math.log(p["init_std"] / 0.02)) ** 2

    return loss


def _kept_step(alpha):
    """What drift centring keeps of x_inf - alpha/n's step from width 64 to 128, fitted exactly
    through the optima at 32 and 64 (each uncertain by half its spacing: the base lr spacing is
    ln(100)/4, halved at 64): the step shrunk by its own stderr, positive part."""
    h0 = math.log(100) / 4
    step = alpha / 128
    stderr = math.sqrt((h0 / 2) ** 2 + (h0 / 4) ** 2) / 2
    return step, stderr, step * max(0.0, 1 - stderr**2 / step**2)


def test_drift_centre_follows_a_measured_drift_within_one_spacing():
    # the level-1 optimum moved further than its own grid's spacing: a drift the levels measure
    result = simulate([LR, STD], [32, 64, 128], _bowl_drifting(60.0), min_points=3)
    step, stderr, kept = _kept_step(60.0)
    assert 0 < kept < result.levels[2].grid.spacing("lr")  # shrunk, but not to the clamp
    previous = math.log(result.levels[1].optimum.point["lr"])
    assert previous == pytest.approx(math.log(0.02) - 60.0 / 64, abs=1e-9)  # exact bowl: optima are the truth
    level2 = result.levels[2].grid
    assert level2.centre("lr") == pytest.approx(previous + kept, abs=1e-9)
    assert "where the drift x*(n) = x_inf - alpha/n heads" in result.levels[2].notes[0]
    assert result.levels[2].optimum.point["lr"] == pytest.approx(0.02 * math.exp(-60.0 / 128), rel=1e-9)
    # init_std does not drift: its centre stays on its previous optimum
    assert level2.centre("init_std") == pytest.approx(math.log(0.02), abs=1e-9)
    # level 1 has one finished level to go on: it is centred on it, as the paper's rule does
    assert result.levels[1].grid.centre("lr") == pytest.approx(math.log(result.levels[0].optimum.point["lr"]))


def test_a_drift_within_its_uncertainty_leaves_the_grids_of_the_previous_centre():
    # a gentle drift moves the optimum by a fraction of a grid spacing per level: two optima cannot
    # tell it from none, so centring on it would only gamble the next grid on their noise
    step, stderr, kept = _kept_step(3.0)
    assert kept == 0.0 and step < stderr
    drift = simulate([LR, STD], [32, 64, 128], _bowl_drifting(3.0), min_points=3)
    previous = simulate([LR, STD], [32, 64, 128], _bowl_drifting(3.0), min_points=3, centre="previous")
    assert [values(lv) for lv in drift.levels] == [values(lv) for lv in previous.levels]
    note = drift.levels[2].notes[0]
    assert "within its uncertainty, so the grid stays on the previous optimum" in note
    assert f"lr by {step:+.2g} +- {stderr:.2g}" in note


def test_drift_centre_is_clamped_to_one_spacing_from_the_previous_optimum():
    levels = simulate([LR, STD], [32, 64], _bowl_drifting(60.0), min_points=3).levels
    previous = math.log(levels[1].optimum.point["lr"])
    step, stderr, kept = _kept_step(60.0)
    loose = drift_centres([LR, STD], levels, 128, {"lr": 2 * kept, "init_std": 1.0})
    assert loose["lr"].centre == pytest.approx(previous + kept) and not loose["lr"].clamped
    assert loose["lr"].step == pytest.approx(step) and loose["lr"].step_stderr == pytest.approx(stderr)
    assert loose["lr"].predicted == pytest.approx(math.log(0.02) - 60.0 / 128)
    tight = drift_centres([LR, STD], levels, 128, {"lr": kept / 4, "init_std": 1.0})
    assert tight["lr"].clamped and tight["lr"].centre == pytest.approx(previous + kept / 4)
    assert drift_centres([LR, STD], levels[:1], 64, {"lr": 1.0, "init_std": 1.0}) == {}


def test_a_noisy_fit_cannot_throw_the_grid_off():
    def loss(p, width, seed):  # the optimum jumps about with width: a fit would extrapolate wildly
        target = {32: 0.01, 64: 0.05, 128: 0.02}[width]
        return (math.log(p["lr"] / target)) ** 2 + (math.log(p["init_std"] / 0.02)) ** 2

    result = simulate([LR, STD], [32, 64, 128], loss, min_points=3, max_shifts=3)
    level1, level2 = result.levels[1], result.levels[2]
    assert level1.bracketed  # level 1's rings followed the jump
    assert abs(math.log(level1.optimum.point["lr"] / 0.05)) < level1.grid.spacing("lr")
    moved = abs(level2.grid.centre("lr") - math.log(level1.optimum.point["lr"]))
    assert moved == pytest.approx(level2.grid.spacing("lr"))  # the clamp, not the fit's leap
    assert "lr held to one spacing from it" in level2.notes[0]


def test_an_unknown_centre_is_refused():
    with pytest.raises(ConfigError) as err:
        next(telescoping_steps([LR], [32, 64], centre="middle"))
    assert err.value.field == "centre"


# ---- sampler levels -----------------------------------------------------------------------------


def test_a_sampler_level_gets_no_ring_and_counts_as_bracketed():
    gen = telescoping_steps([LR, STD], [32, 64, 128], min_points=3)
    step = next(gen)
    step = gen.send([Observation(p, 0, drifting()(p, 32, 0)) for p in step.points])
    while step.level == 0:
        step = gen.send([Observation(p, 0, drifting()(p, 32, 0)) for p in step.points])
    lo, hi = step.grid.box()["lr"]
    # a sampler's samples lie off the grid; the best one sits right at the box's high lr end
    samples = [{"lr": hi * 0.9999, "init_std": 0.0123}, {"lr": lo * 1.01, "init_std": 0.0111}]
    step = gen.send([Observation(p, 0, -p["lr"]) for p in samples])
    assert step.level == 2  # no ring step for the sampler level
    level1 = step.completed[1]
    assert level1.optimum.method == "sample" and level1.bracketed
