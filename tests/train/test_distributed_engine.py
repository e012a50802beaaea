"""A trial on 2 ranks (2 real processes, gloo, no Ray) computes what the trial on one process
computes: the ranks share each global batch, average their gradients, share Muon's Newton-Schulz
and return the same result."""

import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from telescope.core.contract import TrialConfig
from telescope.errors import ConfigError
from telescope.train.trial import all_reduce_sum, build_engine, run_trial

TINY = dict(width=64, base_width=32, head_dim=32, depth=2, seq_len=32, batch_size=8, steps=8,
            eval_interval=4, eval_batches=2, lr=0.02, num_threads=1, device="cpu")
CONFIGS = {"whole": TrialConfig(**TINY), "micro": TrialConfig(**TINY, micro_batch_size=2),
           "adamw": TrialConfig(**TINY, optimizer="adamw")}


def rank_main(rank: int, world: int, init: str, out: str) -> None:
    """One rank: every config of CONFIGS trained as a 2-worker trial; what it saw, pickled."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        seen = {name: run_trial(cfg) for name, cfg in CONFIGS.items()}
        engine = build_engine(CONFIGS["whole"])
        seen["shares_newton_schulz"] = engine.optimizers[0].shard_newton_schulz
        seen["rows"] = engine.local_rows(torch.arange(8)[:, None], torch.arange(8)[:, None])[0].flatten().tolist()
        # buckets of 8 values: the first two tensors share one, the third is reduced in place
        tensors = [torch.full((3,), 1.0 + rank), torch.full((5,), 10.0 * (rank + 1)), torch.full((2, 5), float(rank))]
        all_reduce_sum(tensors, bucket=8)
        seen["sums"] = [t.tolist() for t in tensors]
        try:
            run_trial(TrialConfig(**{**TINY, "batch_size": 7}))
        except ConfigError as err:
            seen["odd_batch"] = (err.field, err.message)
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "wb") as f:
        pickle.dump(seen, f)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = str(tmp / "seen")
    # forkserver: torch and this module are imported once, in the server both ranks fork from
    mp.get_context("forkserver").set_forkserver_preload([__name__])
    mp.start_processes(rank_main, args=(2, f"file://{tmp / 'rendezvous'}", out), nprocs=2, join=True,
                       start_method="forkserver")
    ranks = []
    for rank in range(2):
        with open(f"{out}.{rank}", "rb") as f:
            ranks.append(pickle.load(f))
    return ranks


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_train_what_one_process_trains(two_ranks, name):
    alone = run_trial(CONFIGS[name])
    first, second = (ranks[name] for ranks in two_ranks)
    assert first.status == alone.status == "completed"
    assert first.train_loss == pytest.approx(alone.train_loss, rel=1e-5)
    assert first.val_loss == pytest.approx(alone.val_loss, rel=1e-5)
    assert alone.train_loss[-1] < alone.train_loss[0] - 0.5  # it trained: the curves compare something
    assert first.tokens == alone.tokens and first.flops == alone.flops and first.n_params == alone.n_params
    # every rank returns the same result
    assert first == second
    assert first.device == "2 x cpu"


def test_ranks_take_their_rows_and_share_newton_schulz(two_ranks):
    assert [r["rows"] for r in two_ranks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(r["shares_newton_schulz"] for r in two_ranks)
    assert build_engine(CONFIGS["whole"]).optimizers[0].shard_newton_schulz is False  # one process


def test_gradients_are_summed_over_the_ranks_in_buckets(two_ranks):
    for r in two_ranks:
        assert r["sums"] == [[3.0] * 3, [30.0] * 5, [[1.0] * 5] * 2]


def test_a_batch_the_ranks_cannot_share_is_a_config_error(two_ranks):
    for r in two_ranks:
        field, message = r["odd_batch"]
        assert field == "batch_size" and "2 workers" in message and "use 8" in message
