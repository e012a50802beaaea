"""The trainable contract, pure: the curve and its divergence rule, result parsing, the context's
placeholders, and how a result's extra metrics reach the ledger row."""

import math

import pytest

from telescope.core.contract import TrialConfig
from telescope.core.scaling import group_values
from telescope.core.trainable import (
    BASE_PLACEHOLDERS, RESERVED_COLUMNS, Curve, ResultError, Trainable, TrialContext, TrialDiverged, failed_result,
    parse_result, placeholder_values, placeholders, render_command,
)
from telescope.store.records import CORE_SCHEMA, trial_record


def test_the_curve_diverges_by_the_built_in_gpts_rule():
    curve = Curve(diverge_factor=3.0)
    assert curve.add(1, train_loss=5.0) is None
    assert curve.add(2, train_loss=14.9) is None  # below 3 x the first
    assert curve.add(3, train_loss=15.1) == "loss 15.1 > 3 x initial 5 at step 3"
    assert curve.add(4, train_loss=math.inf) == "loss inf at step 4"
    assert curve.diverged == "loss 15.1 > 3 x initial 5 at step 3"  # the first reason stays
    val = Curve(3.0)
    assert val.add(5, val_loss=math.nan) == "validation loss nan at step 5"
    negative = Curve(3.0)  # a loss below zero (a user's objective) has no ratio rule
    assert negative.add(1, train_loss=-1.0) is None and negative.add(2, train_loss=5.0) is None
    with pytest.raises(TypeError):
        Curve(3.0).add(1.5, train_loss=1.0)


def test_curve_lines_are_checked_like_report_calls():
    curve = Curve(3.0)
    curve.add_line('{"step": 1, "train_loss": 2.5}')
    curve.add_line('{"step": 2, "train_loss": 2.0, "val_loss": 2.2}')
    assert curve.columns() == {"train_steps": [1, 2], "train_loss": [2.5, 2.0], "val_steps": [2], "val_loss": [2.2]}
    assert curve.steps_done == 2 and curve.final_train_loss == 2.0
    for line, says in [("{step: 1}", "not JSON"), ('{"train_loss": 1}', "with a step"),
                       ('{"step": 1, "acc": 0.5}', "'acc' is not a curve metric"),
                       ('{"step": "one", "train_loss": 1}', "step: must be a whole number")]:
        with pytest.raises(ResultError, match=says):
            curve.add_line(line)


def test_a_result_is_parsed_into_a_trial_result_with_its_declared_metrics():
    curve = Curve(3.0)
    curve.add(10, train_loss=2.4)
    r = parse_result({"final_loss": 2.3, "tokens": 640, "flops": 1e9, "grad_norm": 0.7}, metrics=["grad_norm", "acc"],
                     curve=curve, wall_time_s=1.5)
    assert (r.status, r.final_loss, r.tokens, r.flops, r.wall_time_s) == ("completed", 2.3, 640, 1e9, 1.5)
    assert r.steps_done == 10 and r.final_train_loss == 2.4 and r.train_steps == [10]
    assert r.extra["grad_norm"] == 0.7 and math.isnan(r.extra["acc"])  # declared, not given: NaN
    assert parse_result(2.5, metrics=[], curve=Curve(3.0), wall_time_s=0).final_loss == 2.5
    nan = parse_result({"final_loss": math.nan}, metrics=[], curve=Curve(3.0), wall_time_s=0)
    assert nan.status == "diverged" and nan.error == "final_loss nan"
    said = parse_result({"status": "diverged"}, metrics=[], curve=Curve(3.0), wall_time_s=0)
    assert said.status == "diverged" and math.isnan(said.final_loss)
    curve.add(11, train_loss=100.0)  # the curve diverged: whatever the result says
    assert parse_result({"final_loss": 2.0}, metrics=[], curve=curve, wall_time_s=0).status == "diverged"


@pytest.mark.parametrize("raw, says", [
    ({"tokens": 3}, "has no final_loss"),
    ({"final_loss": 2.0, "acc": 0.5}, "'acc' is neither a result field"),
    ({"final_loss": 2.0, "status": "failed"}, "status: must be one of completed, diverged"),
    ({"final_loss": "low"}, "final_loss: must be a number"),
    ({"final_loss": 2.0, "tokens": 2.5}, "tokens: must be a whole number"),
    ({"final_loss": 2.0, "grad_norm": "big"}, "grad_norm: a metric must be a number"),
    ([2.0], "must be an object with final_loss"),
])
def test_what_is_not_a_result_says_why(raw, says):
    with pytest.raises(ResultError, match=says):
        parse_result(raw, metrics=["grad_norm"], curve=Curve(3.0), wall_time_s=0)


def test_report_feeds_the_curve_and_stops_a_diverged_trial(tmp_path):
    ctx = TrialContext.create("t", TrialConfig(width=64, base_width=32, lr=0.01), {"lr": 0.01}, {"n": 2}, tmp_path)
    assert (ctx.width, ctx.base_width, ctx.width_mult, ctx.params, ctx.settings) == (64, 32, 2.0, {"lr": 0.01}, {"n": 2})
    assert ctx.mup == group_values(2.0, 0.01, 0.1, 0.02)  # the muP values telescope.core.scaling gives
    ctx.report(1, train_loss=3.0)
    with pytest.raises(TypeError, match="'accuracy' is not a curve metric"):
        ctx.report(2, accuracy=0.5)
    with pytest.raises(TrialDiverged, match="at step 2"):
        ctx.report(2, train_loss=30.0)


def test_every_placeholder_the_spec_accepts_has_a_value(tmp_path):
    ctx = TrialContext.create("L0-x", TrialConfig(width=64, base_width=32), {"lr": 0.003}, {"shards": 4}, tmp_path)
    values = placeholder_values(ctx, "/usr/bin/python3")
    assert set(values) == {*BASE_PLACEHOLDERS, "shards"}
    argv = render_command(["{python}", "--lr", "{lr:.1e}", "--out", "{result}", "{{literal}}", "{shards}",
                           "{vocab_size}", "{mup_lr_hidden}"], values)
    hidden = ctx.mup.lr["hidden"]
    assert argv == ["/usr/bin/python3", "--lr", "3.0e-03", "--out", str(tmp_path / "result.json"), "{literal}", "4",
                    "", repr(hidden)]
    assert placeholders("a{b}c{{d}}{e:.2f}") == ["b", "e"]
    with pytest.raises(ValueError):
        placeholders("{unclosed")


def test_extra_metrics_become_ledger_columns_and_a_failed_row_keeps_them():
    curve = Curve(3.0)
    curve.add(1, train_loss=2.0)
    ok = parse_result({"final_loss": 2.0, "grad_norm": 0.5}, metrics=["grad_norm"], curve=curve, wall_time_s=1)
    assert ok.summary()["grad_norm"] == 0.5 and "extra" not in ok.summary()
    columns = {"level": 0, "width": 16, "seed": 0}
    assert trial_record("a", ok, axes={"lr": 0.01}, columns=columns).row["grad_norm"] == 0.5
    failed = failed_result("boom", metrics=["grad_norm"])
    row = trial_record("b", failed, axes={"lr": 0.01}, columns=columns).row
    assert row["status"] == "failed" and row["error"] == "boom" and math.isnan(row["grad_norm"])
    assert set(CORE_SCHEMA.names) <= RESERVED_COLUMNS  # a metric can never shadow a core column


def test_the_built_in_trainable_has_no_identity_and_others_do():
    assert Trainable().identity() == "" and Trainable().to_dict() == {}
    a = Trainable.create("python", function="m:f", version="1", settings={"n": [1, 2]})
    assert a.identity() != Trainable.create("python", function="m:f", version="2", settings={"n": [1, 2]}).identity()
    assert a.identity() == Trainable.create("python", function="m:f", version="1", settings={"n": [1, 2]},
                                            working_dir="elsewhere").identity()
    assert hash(a) == hash(Trainable.create("python", function="m:f", version="1", settings={"n": [1, 2]}))
    assert a.settings_dict() == {"n": [1, 2]}
