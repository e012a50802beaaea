import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from telescope.errors import ConfigError, NoOptimumError
from telescope.core.rule import (
    Axis,
    Observation,
    added_points,
    base_grid,
    count_schedule,
    describe_widening,
    find_optimum,
    level_widths,
    narrow,
    next_count,
    simulate,
    telescoping_steps,
    widen,
)

LR = Axis("lr", 1e-3, 1e-1, "log", 5)
STD = Axis("init_std", 0.005, 0.08, "log", 5)
WD = Axis("weight_decay", 0.0, 0.2, "linear", 5, bounds=(0.0, math.inf))


def u(axis, x):
    return math.log(x) if axis.scale == "log" else x


def observe(grid, loss, seeds=(0,)):
    return [Observation(p, s, loss(p)) for p in grid.points() for s in seeds]


# ---- next_count ---------------------------------------------------------------------------------


def test_paper_schedule():
    assert count_schedule([8, 8], 4) == [(8, 8), (5, 5), (3, 3), (1, 1)]
    assert count_schedule([8, 8], 4, min_points=3) == [(8, 8), (5, 5), (3, 3), (3, 3)]
    # k=1 quarters the points, k=3 shrinks them by 0.63: both still end at one point
    assert count_schedule([9], 3) == [(9,), (3,), (1,)]
    assert count_schedule([17], 3) == [(17,), (5,), (1,)]
    assert count_schedule([8] * 3, 4) == [(8,) * 3, (5,) * 3, (3,) * 3, (1,) * 3]


@given(st.integers(1, 300), st.integers(1, 4), st.sampled_from([1, 3, 5, 7]))
def test_next_count_is_odd_nearest_and_never_grows(n, k, min_points):
    r = next_count(n, k, min_points)
    x = n * 4 ** (-1 / k)
    nearest_odd = min(range(1, 2 * n + 3, 2), key=lambda o: (abs(o - x), -o))  # ties go up
    assert r == min(n, max(nearest_odd, min_points))
    assert 1 <= r <= n and r >= min(n, min_points)
    assert r % 2 == 1 or r == n  # odd keeps the centre point, unless capped at an even n


@given(st.integers(3, 300))
def test_cost_per_level_is_about_flat_for_two_axes(n):
    # trials ~ points^2, a trial at twice the width costs ~4x: the level costs 4 (n'/n)^2 as much
    r = next_count(n, 2)
    ratio = 4 * (r / n) ** 2
    assert (1 - 2 / n) ** 2 - 1e-12 <= ratio <= (1 + 2 / n) ** 2 + 1e-12
    if n >= 8:
        assert 0.5 < ratio < 1.6


# ---- grids --------------------------------------------------------------------------------------


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4))
def test_base_grid_points_are_the_product_without_duplicates(n1, n2, n3):
    axes = [Axis("lr", 1e-4, 1e-1, "log", n1), Axis("weight_decay", 0.0, 0.3, "linear", n2, (0, math.inf)),
            Axis("init_std", 0.01, 0.04, "log", n3)]
    grid = base_grid(axes, 32)
    points = grid.points()
    assert len(points) == n1 * n2 * n3 == grid.n_points
    assert len({tuple(p.values()) for p in points}) == len(points)
    assert grid.shape == f"{n1}x{n2}x{n3}"
    for a in axes:
        values = grid.axis_values(a.name)
        if a.points > 1:
            assert values[0] == a.low and values[-1] == a.high
            gaps = np.diff([u(a, v) for v in values])
            np.testing.assert_allclose(gaps, gaps[0], rtol=1e-9)
        assert all(grid.index_of(p) is not None for p in points)
    assert grid.box()["lr"] == (grid.axis_values("lr")[0], grid.axis_values("lr")[-1])


@settings(max_examples=60)
@given(st.floats(-1, 1), st.floats(-1, 1), st.integers(3, 9), st.sampled_from([1, 3]))
def test_narrow_centres_on_the_optimum_with_half_the_spacing(a, b, n, min_points):
    lr, std = Axis("lr", 1e-3, 1e-1, "log", n), Axis("init_std", 0.005, 0.08, "log", n)
    grid = base_grid([lr, std], 32)
    optimum = {"lr": math.exp(u(lr, 1e-2) + a), "init_std": math.exp(u(std, 0.02) + b)}
    nxt = narrow(grid, optimum, 2, min_points)
    assert nxt.level == 1 and nxt.width == 64
    for axis in (lr, std):
        g_old, g_new = grid.axis(axis.name), nxt.axis(axis.name)
        assert g_new.count <= g_old.count and g_new.count % 2 == 1
        assert g_new.spacing == g_old.spacing / 2
        assert g_new.centre == pytest.approx(math.log(optimum[axis.name]), abs=1e-12)
        middle = nxt.axis_values(axis.name)[g_new.count // 2]  # odd counts keep the optimum itself
        assert middle == pytest.approx(optimum[axis.name], rel=1e-11)


def test_narrowed_grid_stays_inside_the_valid_range():
    grid = base_grid([LR, WD], 32)
    nxt = narrow(grid, {"lr": 0.01, "weight_decay": 0.0}, 2, 3)
    wd = nxt.axis_values("weight_decay")
    assert wd == (0.0, 0.025, 0.05)  # shifted up to start at 0, not centred below it
    assert nxt.axis_values("lr")[1] == pytest.approx(0.01)


def test_widening_keeps_old_points_and_adds_a_ring_beyond_the_edge():
    grid = base_grid([LR, STD], 32)
    wide = widen(grid, {"lr": "high", "init_std": "low"})
    assert wide.counts == (6, 6) and wide.widened == 1 and wide.level == 0 and wide.width == 32
    new_points = wide.points()
    for p in grid.points():  # bit-identical values, so their results are reused
        assert p in new_points
    lr_old, lr_new = grid.axis_values("lr"), wide.axis_values("lr")
    assert lr_new[:-1] == lr_old and lr_new[-1] == pytest.approx(lr_old[-1] * (lr_old[1] / lr_old[0]))
    std_old, std_new = grid.axis_values("init_std"), wide.axis_values("init_std")
    assert std_new[1:] == std_old and std_new[0] < std_old[0]
    ring = added_points(grid, wide)
    assert len(ring) == 36 - 25 and all(p not in grid.points() for p in ring)
    again = widen(wide, {"lr": "high"})
    assert all(p in again.points() for p in wide.points())


def test_widening_stops_at_the_valid_range():
    grid = base_grid([LR, WD], 32)
    assert widen(grid, {"weight_decay": "low"}) is grid
    optimum = find_optimum(grid, observe(grid, lambda p: p["weight_decay"] + (math.log(p["lr"] / 0.01)) ** 2))
    assert optimum.on_edge == {"lr": None, "weight_decay": "low"}
    sentence = describe_widening(grid, grid, optimum)
    assert sentence.startswith("weight_decay optimum 0 on the low edge of the base grid")
    assert "kept, 0 is the end of weight_decay's valid range" in sentence


def test_widening_sentence():
    grid = base_grid([LR], 32)
    optimum = find_optimum(grid, observe(grid, lambda p: -p["lr"]))
    assert optimum.on_edge == {"lr": "high"}
    sentence = describe_widening(grid, widen(grid, optimum.on_edge), optimum)
    assert sentence == "lr optimum 0.1 on the high edge of the base grid (width 32): widening to 0.316"


def test_levels_double():
    assert level_widths(32, 128) == [32, 64, 128]
    assert level_widths(256, 256) == [256]
    for base, cal in ((32, 96), (64, 32), (32, 0)):
        with pytest.raises(ConfigError) as err:
            level_widths(base, cal)
        assert err.value.field == "calibration_width"


# ---- optimum ------------------------------------------------------------------------------------


def test_optimum_is_the_best_mean_over_seeds():
    grid = base_grid([Axis("lr", 1e-3, 1e-1, "log", 3)], 32)
    low, mid, high = ({"lr": v} for v in grid.axis_values("lr"))
    obs = [
        Observation(low, 0, 1.0), Observation(low, 1, 3.0),  # best single seed, mean 2.0
        Observation(mid, 0, 1.8), Observation(mid, 1, 1.9),  # best mean, 1.85
        Observation(high, 0, 2.5), Observation(high, 1, 2.5),
    ]
    opt = find_optimum(grid, obs)
    assert opt.grid_point == mid and opt.loss == pytest.approx(1.85) and opt.n_seeds == 2
    assert opt.on_edge == {"lr": None}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_diverged_seed_makes_a_point_worse_than_any_finite_loss(bad):
    grid = base_grid([Axis("lr", 1e-3, 1e-1, "log", 3)], 32)
    low, mid, high = ({"lr": v} for v in grid.axis_values("lr"))
    obs = [
        Observation(low, 0, 0.1), Observation(low, 1, bad),  # a great seed cannot rescue a diverged one
        Observation(mid, 0, 50.0), Observation(mid, 1, 50.0),
        Observation(high, 0, bad), Observation(high, 1, bad),
    ]
    opt = find_optimum(grid, obs)
    assert opt.grid_point == mid and opt.method == "grid"  # no finite neighbours to fit
    with pytest.raises(NoOptimumError) as err:
        find_optimum(grid, [Observation(p, 0, bad) for p in (low, mid, high)])
    assert (err.value.level, err.value.width) == (0, 32)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 3),
    st.lists(st.floats(-0.5, 0.5), min_size=3, max_size=3),
    st.lists(st.floats(-0.4, 0.4), min_size=3, max_size=3),
    st.lists(st.floats(0.5, 3.0), min_size=3, max_size=3),
)
def test_quadratic_fit_recovers_the_minimum_of_a_bowl(k, shift, coupling, curvature):
    axes = [Axis("lr", 1e-3, 1e-1, "log", 5), Axis("init_std", 0.005, 0.08, "log", 5),
            Axis("weight_decay", 0.0, 0.2, "linear", 5, (0, math.inf))][:k]
    grid = base_grid(axes, 32)
    spacing = np.array([grid.spacing(a.name) for a in axes])
    truth = np.array([grid.centre(a.name) for a in axes]) + np.array(shift[:k]) * spacing
    m = np.diag(curvature[:k])
    for i, j in itertools.combinations(range(k), 2):
        m[i, j] = m[j, i] = coupling[i + j - 1] * math.sqrt(curvature[i] * curvature[j])
    assume(np.linalg.eigvalsh(m).min() > 0.1)
    h = m / np.outer(spacing, spacing)

    def loss(p):
        d = np.array([u(a, p[a.name]) for a in axes]) - truth
        return 3.0 + 0.5 * d @ h @ d

    obs = observe(grid, loss, seeds=(0, 1))
    best = find_optimum(grid, obs)
    assume(all(abs(u(a, best.grid_point[a.name]) - t) <= s for a, t, s in zip(axes, truth, spacing)))
    assert best.method == "quadratic" and not best.clamped
    found = np.array([u(a, best.point[a.name]) for a in axes])
    assert np.abs(found - truth).max() < 1e-9


def test_quadratic_fit_is_clamped_to_the_neighbourhood():
    axes = [Axis("lr", 1e-3, 1e-1, "log", 3), Axis("init_std", 0.005, 0.08, "log", 3)]
    grid = base_grid(axes, 32)
    # the centre is the best point, but the least-squares quadratic through this rough 3x3
    # surface puts its minimum far outside: (-1.89, 2.81) spacings away
    table = np.array([[0.9, 0.2, 0.1], [0.7, 0.0, 0.2], [0.4, 0.9, 0.6]])
    offsets = np.array(list(itertools.product((-1, 0, 1), repeat=2)), float)
    x, y = offsets.T
    design = np.column_stack([np.ones(9), x, y, x * x, x * y, y * y])
    c = np.linalg.lstsq(design, table.ravel(), rcond=None)[0]
    hessian = np.array([[2 * c[3], c[4]], [c[4], 2 * c[5]]])
    assert np.linalg.eigvalsh(hessian).min() > 0
    assert np.abs(np.linalg.solve(hessian, -c[1:3])).max() > 1
    obs = [Observation(grid.point_at(idx), 0, table[idx]) for idx in itertools.product(range(3), repeat=2)]
    best = find_optimum(grid, obs)
    assert best.method == "quadratic" and best.clamped
    assert best.grid_point == grid.point_at((1, 1))
    assert best.point == grid.point_at((0, 2))  # (-1, +1) spacing: the corner of the neighbourhood


def test_parabola_refinement_on_an_edge_and_no_refinement_when_flat():
    grid = base_grid([LR, STD], 32)
    # best init_std on its low edge: no full fit, but lr still gets its 1-D parabola
    obs = observe(grid, lambda p: (math.log(p["lr"] / 0.012)) ** 2 + p["init_std"])
    best = find_optimum(grid, obs)
    assert best.method == "parabola" and best.on_edge == {"lr": None, "init_std": "low"}
    assert best.point["lr"] == pytest.approx(0.012, rel=1e-9)
    assert best.point["init_std"] == best.grid_point["init_std"] == 0.005
    flat = find_optimum(grid, observe(grid, lambda p: 1.0))
    assert flat.method == "grid" and not flat.refined and flat.grid_point == grid.points()[0]


def test_off_grid_observations_take_the_best_sample():
    grid = base_grid([LR], 32)
    obs = [
        Observation({"lr": 0.0123}, 0, 2.0),
        Observation({"lr": 0.0456}, 0, 1.5),
        Observation({"lr": 0.0456}, 1, 1.7),
    ]
    best = find_optimum(grid, obs)
    assert best.method == "sample" and best.point == {"lr": 0.0456} and best.loss == pytest.approx(1.6)


# ---- the loop -----------------------------------------------------------------------------------


def _bowl(lr_truth):
    def loss(p, width, seed):
        return (math.log(p["lr"] / lr_truth)) ** 2 + (math.log(p["init_std"] / 0.02)) ** 2

    return loss


def test_edge_optimum_widens_the_base_grid():
    # lr optimum 0.25, above the base grid (1e-3..0.1, a factor 3.16 apart): the first ring adds
    # 0.316, still an edge; the second adds 1.0, and the parabola through 0.1, 0.316, 1 finds 0.25
    result = simulate([LR, STD], [32, 64], _bowl(0.25), max_widenings=2)
    level0 = result.levels[0]
    assert level0.grid.widened == 2 and level0.grid.counts == (7, 5)
    widenings = [n.split(": ")[1] for n in level0.notes if "widening to" in n]
    assert widenings == ["widening to 0.316", "widening to 1"]
    assert level0.optimum.on_edge == {"lr": None, "init_std": None}
    assert level0.optimum.point["lr"] == pytest.approx(0.25, rel=1e-9)
    # every point ran once: widening reused the old results
    assert len(level0.observations) == 35 == len({tuple(o.point.values()) for o in level0.observations})
    # the next level narrows from the planned 5 points, not the widened 7
    assert result.levels[1].grid.counts == (3, 3)


def test_widening_gives_up_after_max_widenings_and_says_so():
    result = simulate([LR, STD], [32], _bowl(5.0), max_widenings=1)
    level0 = result.levels[0]
    assert level0.grid.counts == (6, 5) and level0.optimum.on_edge["lr"] == "high"
    assert any("still on the high edge" in n and "axes.lr.high further out or a larger max_widenings" in n
               for n in level0.notes)
    assert not level0.bracketed and level0.unbracketed == {"lr": "high"}


def test_driver_protocol_yields_only_new_points():
    gen = telescoping_steps([LR], [32, 64, 128], min_points=3, max_widenings=1)
    step = next(gen)
    assert step.level == 0 and len(step.points) == 5
    step = gen.send([Observation(p, 0, -p["lr"]) for p in step.points])  # optimum on the high edge
    assert step.level == 0 and step.points == ({"lr": step.grid.axis_values("lr")[-1]},)
    step = gen.send([Observation(p, 0, -p["lr"]) for p in step.points])
    assert step.level == 1 and step.width == 64 and len(step.points) == 3
    with pytest.raises(ValueError):
        next(telescoping_steps([LR], [32, 96]))


def _drift_loss(truth_inf, alpha, curvature):
    # a non-quadratic bowl whose optimum drifts with width as u*(n) = u* - alpha / n
    def loss(p, width, seed):
        d = np.array([math.log(p["lr"]), math.log(p["init_std"])]) - (truth_inf - alpha / width)
        return float(np.sum(np.log1p(curvature * d**2)) + 0.3 * np.tanh(d[0] * d[1]) ** 2)

    return loss


@settings(max_examples=25, deadline=None)
@given(
    st.floats(math.log(3e-3), math.log(3e-2)),
    st.floats(math.log(0.01), math.log(0.04)),
    st.floats(6.0, 12.0),
    st.floats(-12.0, -6.0),
    st.floats(0.5, 3.0),
)
def test_telescoping_tracks_a_drifting_optimum(lr_inf, std_inf, alpha_lr, alpha_std, curvature):
    truth_inf, alpha = np.array([lr_inf, std_inf]), np.array([alpha_lr, alpha_std])
    widths = level_widths(32, 256)
    result = simulate([LR, STD], widths, _drift_loss(truth_inf, alpha, curvature), min_points=3)
    truth = truth_inf - alpha / widths[-1]

    def error(optimum):
        return np.abs(np.log([optimum.point["lr"], optimum.point["init_std"]]) - truth)

    final_spacing = np.array([result.levels[-1].grid.spacing(n) for n in ("lr", "init_std")])
    assert (error(result.optimum) <= final_spacing).all()  # within one grid cell of the truth
    assert np.linalg.norm(error(result.optimum)) < np.linalg.norm(error(result.levels[0].optimum))
    # the planned 3x3 at every later level, plus any rings that followed the drift
    assert [tuple(g.count - g.rings for g in lv.grid.axes) for lv in result.levels[1:]] == [(3, 3)] * 3
    assert all(lv.bracketed for lv in result.levels)
