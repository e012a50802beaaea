import pickle

import pytest

from telescope.core.contract import TrialConfig
from telescope.errors import ConfigError
from telescope.core.flops import flops_per_token, matmul_params, newton_schulz_flops


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"width": 0}, "width"),
        ({"width": 48, "head_dim": 32}, "width"),
        ({"width": 32, "base_width": 64}, "width"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"steps": 0}, "steps"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"hidden_lr_rule": "magic"}, "hidden_lr_rule"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"diverge_factor": 1.0}, "diverge_factor"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        TrialConfig(**changes)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_fingerprint_is_content_addressed_and_picklable():
    a, b = TrialConfig(lr=1e-3), TrialConfig(lr=1e-3)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != a.replace(seed=1).fingerprint()
    assert a.fingerprint() == a.replace(num_threads=2).fingerprint()  # execution, not content
    # float noise below 12 significant digits does not change the id
    assert a.fingerprint() == a.replace(lr=1e-3 + 1e-18).fingerprint()
    assert pickle.loads(pickle.dumps(a)) == a
    assert a.n_heads == 2 and a.width_mult == 2.0


def test_flop_accounting_matches_hand_count():
    # width 128, 4 layers, vocab 256: 4 * 12 * 128^2 + 256 * 128
    assert matmul_params(128, 4, 256) == 4 * 12 * 128 * 128 + 256 * 128
    assert flops_per_token(128, 4, 256, 256) == 6 * matmul_params(128, 4, 256) + 12 * 4 * 128 * 256
    # square 64x64, one NS step: 4*64^3 + 2*64^3
    assert newton_schulz_flops(64, 64, ns_steps=1) == 6 * 64**3
    assert newton_schulz_flops(64, 256) == newton_schulz_flops(256, 64)
