"""The ledger's FLOPs columns and point ids: `flops` (model) and `optimizer_flops` (Muon's
Newton-Schulz) as telescope.core.flops counts them, older parts without `optimizer_flops`, and
`point_id` filled on every row."""

from __future__ import annotations

import math

import pyarrow.parquet as pq

from telescope.api import Sweep
from telescope.core.contract import BYTE_VOCAB
from telescope.core.flops import optimizer_flops, training_flops
from telescope.state import point_id
from telescope.store.files import write_table
from telescope.store.ledger import Ledger
from telescope.store.records import CORE_SCHEMA, total_flops, trial_record
from tests.store.helpers import result


def test_each_trial_records_its_model_and_newton_schulz_flops(real_sweep):
    cfg = Sweep.open(real_sweep).spec.fixed
    trials = Ledger(real_sweep).trials()
    assert cfg.optimizer == "muon" and len(trials) and (trials["steps_done"] > 0).all()
    for row in trials.itertuples():
        assert row.flops == training_flops(row.width, cfg.depth, cfg.seq_len, BYTE_VOCAB, cfg.batch_size,
                                           row.steps_done, cfg.mlp_ratio)
        assert row.optimizer_flops == optimizer_flops("muon", row.width, cfg.depth, row.steps_done, cfg.mlp_ratio)
    assert total_flops(trials) == trials["flops"].sum() + trials["optimizer_flops"].sum()


def test_every_row_has_the_point_id_of_its_level_and_point(real_sweep):
    trials = Ledger(real_sweep).trials()
    expected = [point_id(row["level"], {"lr": row["lr"], "init_std": row["init_std"]})
                for row in trials.to_dict("records")]
    assert trials["point_id"].tolist() == expected
    # one id per point of a level (its seeds share it: tests/run/test_machine_kind.py)
    assert trials["point_id"].nunique() == len(trials.drop_duplicates(["level", "lr", "init_std"]))


def record(trial_id: str, ns: float):
    res = result()
    res.optimizer_flops = ns
    return trial_record(trial_id, res, axes={"lr": 1e-3}, columns={"level": 0, "width": 64, "seed": 0})


def test_a_ledger_written_before_optimizer_flops_reads_resumes_and_compacts(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append([record("old", 5.0)])
    (part,) = (tmp_path / "trials.parquet").glob("part-*.parquet")
    table = pq.read_table(part)
    write_table(table.drop_columns(["optimizer_flops"]), part)  # as telescope wrote it before
    assert "optimizer_flops" not in pq.read_schema(part).names

    old = Ledger(tmp_path)
    trials = old.trials()
    assert list(trials.columns[: len(CORE_SCHEMA)]) == CORE_SCHEMA.names and old.axes() == ["lr"]
    assert math.isnan(trials.loc[0, "optimizer_flops"]) and trials.loc[0, "flops"] == 1.5e12
    assert old.append([record("new", 7.0)]) == ["new"]  # a resumed sweep adds rows that have it
    assert old.recorded_ids() == {"old", "new"}
    for reader in (old, Ledger(tmp_path)):
        both = reader.trials().set_index("trial_id")["optimizer_flops"]
        assert math.isnan(both["old"]) and both["new"] == 7.0
    assert old.compact() == 2
    both = Ledger(tmp_path).trials().set_index("trial_id")
    assert math.isnan(both.loc["old", "optimizer_flops"]) and both.loc["new", "optimizer_flops"] == 7.0
    assert len(Ledger(tmp_path).curves()) == 6
    # an older row counts its model FLOPs only
    assert total_flops(both) == 2 * 1.5e12 + 7.0
