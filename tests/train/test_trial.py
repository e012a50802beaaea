"""run_trial end to end on the builtin corpus, and the `telescope trial` command."""

import json
import math
import pickle
import subprocess
import sys

import pytest
import torch

from telescope.cli import main
from telescope.core.contract import TrialConfig
from telescope.core.corpus import load_corpus, unigram_entropy
from telescope.errors import ConfigError
from telescope.core.flops import matmul_params, training_flops
from telescope.train.trial import run_trial

# one thread: tiny models run several times faster than with two on a shared 2-core box, and
# bit-for-bit determinism is promised per thread count
TINY = dict(width=32, base_width=32, head_dim=32, depth=1, seq_len=32, batch_size=8, steps=12,
            eval_interval=6, eval_batches=2, lr=0.01, num_threads=1)
# learns well below the unigram entropy in ~60 steps (a few CPU seconds)
LEARN = dict(width=64, base_width=32, head_dim=32, depth=2, seq_len=64, batch_size=16, steps=60,
             eval_interval=20, eval_batches=4, lr=0.03, num_threads=1)


@pytest.fixture(scope="module")
def learned():
    cfg = TrialConfig(**LEARN)
    return cfg, run_trial(cfg)


def test_trial_learns_below_unigram_entropy(learned):
    cfg, r = learned
    entropy = unigram_entropy(load_corpus(cfg.data))
    assert r.status == "completed" and r.error is None
    assert r.train_loss[0] == pytest.approx(math.log(256), abs=0.05)  # small init logits: ~ln(vocab)
    assert r.final_loss < entropy - 0.4, (r.final_loss, entropy)
    assert r.val_steps == [20, 40, 60] and r.final_loss == r.val_loss[-1]
    assert r.val_loss[0] > r.val_loss[1] > r.val_loss[2]
    assert r.train_steps == list(range(1, 61)) and len(r.train_loss) == 60
    assert r.steps_done == 60 and r.tokens == 60 * 16 * 64
    assert r.flops == training_flops(64, 2, 64, 256, 16, 60)
    assert r.n_params == matmul_params(64, 2, 256)
    assert r.device == "cpu" and r.wall_time_s > 0


def test_result_is_picklable_and_json_serializable(learned):
    _, r = learned
    assert pickle.loads(pickle.dumps(r)) == r
    assert pickle.loads(pickle.dumps(run_trial)) is run_trial  # Ray ships the function by reference
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()


def test_same_seed_same_curve_other_seed_differs():
    threads = torch.get_num_threads()
    a, b = run_trial(TrialConfig(**TINY)), run_trial(TrialConfig(**TINY))
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss  # bit for bit
    c = run_trial(TrialConfig(**TINY, seed=1))
    assert c.train_loss[1:] != a.train_loss[1:]
    assert torch.get_num_threads() == threads  # global torch state restored
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_huge_lr_diverges_early(optimizer):
    r = run_trial(TrialConfig(**{**TINY, "steps": 40, "lr": 100.0, "optimizer": optimizer}))
    assert r.status == "diverged"
    assert r.steps_done < 40 and len(r.train_loss) == r.steps_done
    assert math.isnan(r.final_loss)
    assert "initial" in r.error and f"step {r.steps_done}" in r.error
    assert r.tokens == r.steps_done * 8 * 32


def test_adamw_trial_learns():
    r = run_trial(TrialConfig(**{**TINY, "optimizer": "adamw", "lr": 0.01}))
    assert r.status == "completed" and r.final_loss < r.train_loss[0] - 1.0


def test_bad_data_raises_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_trial(TrialConfig(**TINY, data=str(tmp_path / "missing")))
    assert err.value.field == "data"


def test_cli_errors_name_the_field(capsys):
    for argv, field in [
        (["--width", "0"], "width"),
        (["--width", "48"], "width"),
        (["--width", "16"], "width"),  # below the base width
        (["--lr", "-1"], "lr"),
        (["--steps", "0"], "steps"),
        (["--data", "/no/such/corpus"], "data"),
    ]:
        assert main(["trial", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {field}:" in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["trial", "--optimizer", "sgd"])
    assert exit_.value.code == 2 and "--optimizer" in capsys.readouterr().err


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "telescope", "trial", *args], capture_output=True, text=True)


def test_cli_json_prints_one_object():
    p = cli("--width", "32", "--base-width", "32", "--depth", "1", "--seq-len", "32", "--batch-size", "8",
            "--steps", "5", "--num-threads", "1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "completed" and out["tokens"] == 5 * 8 * 32
    assert {"final_loss", "flops", "wall_time_s", "device", "steps_done", "unigram_entropy"} <= set(out)
    assert out["final_loss"] < math.log(256)


def test_cli_bad_input_exits_2_without_traceback():
    for args, field in [(("--width", "48"), "width"), (("--optimizer", "sgd"), "--optimizer")]:
        p = cli(*args)
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.count("\n") == 1 and field in p.stderr and "Traceback" not in p.stderr
