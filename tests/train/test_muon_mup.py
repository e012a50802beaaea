"""telescope.train.muon_mup on a model that is not telescope's GPT (RMSNorm, a SwiGLU MLP with a
bias, rotary attention, a fused qkv matrix), checked against mup's own bookkeeping (`infshape`,
MuAdamW); the export round trip on the built-in GPT; the coordinate check on the custom model."""

import json
import math

import mup
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from telescope.core.contract import TrialConfig
from telescope.api import Sweep
from telescope.core.optimizers import ADAMW_BETAS, ADAMW_EPS, MUON_SETTINGS, optimizer_of_group, optimizer_settings
from telescope.core.scaling import GROUPS, group_values, scaling_for
from telescope.errors import ConfigError
from telescope.read.export import FORMATS, render
from telescope.train import muon_mup as mu
from telescope.train.coordcheck import figure
from telescope.train.model import build_model
from telescope.train.muon import Muon
from telescope.train.optim import build_optimizers

VOCAB, HEAD_DIM, BASE_WIDTH = 64, 8, 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these models are tiny, and the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of (B, heads, T, head_dim) channels by position-dependent angles."""
    T, hd = x.shape[-2], x.shape[-1]
    angles = torch.arange(T)[:, None] * (10000.0 ** (-torch.arange(0, hd, 2) / hd))[None]
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()), -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, D // HEAD_DIM, HEAD_DIM).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gate = nn.Linear(width, 2 * width, bias=False)
        self.up = nn.Linear(width, 2 * width, bias=True)
        self.down = nn.Linear(2 * width, width, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(width), Attention(width)
        self.norm2, self.mlp = nn.RMSNorm(width), SwiGLU(width)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, width: int, depth: int = 2):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.RMSNorm(width)
        self.lm_head = mu.MuReadout(width, VOCAB, bias=True)

    def forward(self, idx):
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


EXPECTED = {"tok_emb.weight": "embedding", "norm.weight": "norm", "lm_head.weight": "readout", "lm_head.bias": "norm"}
for i in range(2):
    EXPECTED |= {f"blocks.{i}.{n}": "hidden" for n in ("attn.qkv.weight", "attn.proj.weight", "mlp.gate.weight",
                                                        "mlp.up.weight", "mlp.down.weight")}
    EXPECTED |= {f"blocks.{i}.{n}": "norm" for n in ("norm1.weight", "norm2.weight", "mlp.up.bias")}


def with_base_shapes(model: nn.Module, parameterization: str = "mup") -> nn.Module:
    if parameterization == "sp":
        return mup.set_base_shapes(model, None, rescale_params=False)
    return mup.set_base_shapes(model, TinyLM(BASE_WIDTH), delta=TinyLM(2 * BASE_WIDTH), rescale_params=False)


def settings(optimizers) -> dict[int, tuple[str, str, float, float]]:
    """id(param) -> (optimizer class, group, lr, weight decay); a parameter in two groups fails."""
    out = {}
    for opt in optimizers:
        for g in opt.param_groups:
            for p in g["params"]:
                assert id(p) not in out
                out[id(p)] = (type(opt).__name__, g.get("group"), g["lr"], g["weight_decay"])
    return out


def test_default_roles_and_mups_view_of_them():
    model = with_base_shapes(TinyLM(64))
    assert mu.roles(model) == EXPECTED
    for name, p in model.named_parameters():
        # mup's matrix-like parameters (two width dimensions) are exactly the hidden matrices
        assert (p.infshape.ninf() == 2) == (EXPECTED[name] == "hidden"), name
        if p.infshape.ninf():
            assert p.infshape.width_mult() == 64 / BASE_WIDTH, name  # every width dimension scales by m


def test_rules_override_the_defaults_by_pattern_or_function():
    model = TinyLM(32)
    by_pattern = mu.roles(model, {"blocks.*.mlp.up.bias": "hidden", "tok_emb.*": "embedding"})
    assert by_pattern == EXPECTED | {"blocks.0.mlp.up.bias": "hidden", "blocks.1.mlp.up.bias": "hidden"}
    by_function = mu.roles(model, lambda name, p: "readout" if name.startswith("norm") else None)
    assert by_function == EXPECTED | {"norm.weight": "readout"}
    # a role dict is itself a set of (exact) patterns
    assert mu.roles(model, by_pattern) == by_pattern
    # common names without telling module types: nanoGPT's, HF Llama's, a top-level head
    plain = nn.ModuleDict({"wte": nn.Linear(4, 8), "embed_tokens": nn.Linear(4, 8), "head": nn.Linear(8, 4),
                           "output": nn.Linear(8, 4), "mlp": nn.ModuleDict({"output": nn.Linear(8, 8)})})
    got = mu.roles(plain)
    assert [got[f"{n}.weight"] for n in ("wte", "embed_tokens", "head", "output", "mlp.output")] == \
        ["embedding", "embedding", "readout", "readout", "hidden"]
    assert {got[f"{n}.bias"] for n in ("wte", "head", "mlp.output")} == {"norm"}


def test_bad_rules_name_the_parameter_and_the_fix():
    model = TinyLM(32)
    mu.init_weights(model, width=32, base_width=BASE_WIDTH, init_std=0.02)
    with pytest.raises(ConfigError, match=r"'tok_emb.weight' got role 'embeddings'; a role is one of hidden"):
        mu.roles(model, {"tok_emb.*": "embeddings"})
    with pytest.raises(ConfigError, match=r"'norm.weight' matches patterns with different roles.*disjoint"):
        mu.roles(model, {"norm.*": "norm", "*.weight": "hidden"})
    with pytest.raises(ConfigError, match=r"'blocks.0.mlp.up.bias' has shape \(64,\), but Muon takes 2-D"):
        mu.optimizers(model, width=32, base_width=BASE_WIDTH, lr=0.01, weight_decay=0.0,
                      rules={"*.up.bias": "hidden"})
    # a readout without the 1/width_mult multiplier is not muP
    plain = nn.Sequential(nn.Embedding(VOCAB, 32), nn.Linear(32, 32), nn.Linear(32, VOCAB))
    with pytest.raises(ConfigError, match=r"'2.weight' is the readout, but 2 is a Linear.*MuReadout"):
        mu.init_weights(plain, width=32, base_width=BASE_WIDTH, init_std=0.02, rules={"2.weight": "readout"})
    # SP needs no multiplier
    mu.init_weights(plain, width=32, base_width=BASE_WIDTH, init_std=0.02, parameterization="sp",
                    rules={"2.weight": "readout"})
    # optimizers for a width the readout was not set up for
    with pytest.raises(ConfigError, match=r"lm_head multiplies the logits by 0.5, but this width wants 0.25.*"
                                          r"init_weights\(model, width=64, base_width=16"):
        mu.optimizers(model, width=64, base_width=BASE_WIDTH, lr=0.01, weight_decay=0.0)


@pytest.mark.parametrize("parameterization", ["mup", "sp"])
def test_init_follows_each_role_and_mups_width_mult(parameterization):
    width, init_std = 128, 0.05
    model = with_base_shapes(TinyLM(width), parameterization)
    mu.init_weights(model, width=width, base_width=BASE_WIDTH, init_std=init_std, parameterization=parameterization,
                    generator=torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        role = EXPECTED[name]
        if role == "norm":
            assert torch.all(p == (0.0 if name.endswith("bias") else 1.0)), name
            continue
        # mup's own multiplier of the fan-in: variance ~ 1/fan_in for matrix-like weights only
        fan_in_mult = p.infshape.fanin_fanout()[0].width_mult() if p.infshape.ninf() == 2 else 1.0
        assert p.std().item() == pytest.approx(init_std / math.sqrt(fan_in_mult), rel=0.06), name
        assert abs(p.mean().item()) < 0.1 * p.std().item(), name
    want = 1 / model.lm_head.weight.infshape.width_mult()  # mup's MuReadout multiplier (1 under sp)
    assert model.lm_head.output_mult == pytest.approx(want)
    # the logits really are output_mult * W h + b
    seen = {}
    model.lm_head.register_forward_hook(lambda mod, inp, out: seen.update(h=inp[0], out=out))
    logits = model(torch.randint(0, VOCAB, (2, 8)))
    expected = model.lm_head.output_mult * seen["h"] @ model.lm_head.weight.T + model.lm_head.bias
    assert torch.allclose(logits, expected, atol=1e-6)
    # same seed, same init
    again = TinyLM(width)
    mu.init_weights(again, width=width, base_width=BASE_WIDTH, init_std=init_std, parameterization=parameterization,
                    generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize("rule", ["spectral", "adam-mup"])
def test_muon_groups_follow_scaling_and_mups_width_mult(rule):
    width, lr, wd = 64, 0.02, 0.1
    model = with_base_shapes(TinyLM(width))
    mu.init_weights(model, width=width, base_width=BASE_WIDTH, init_std=0.02)
    opts = mu.optimizers(model, width=width, base_width=BASE_WIDTH, lr=lr, weight_decay=wd, hidden_lr_rule=rule)
    assert [type(o) for o in opts] == [Muon, torch.optim.AdamW]
    assert [g["group"] for o in opts for g in o.param_groups] == list(GROUPS)
    values = group_values(width / BASE_WIDTH, lr, wd, 0.02, hidden_lr_rule=rule)
    got = settings(opts)
    for name, p in model.named_parameters():
        kind, group, plr, pwd = got[id(p)]
        assert group == EXPECTED[name] and kind == ("Muon" if group == "hidden" else "AdamW"), name
        assert (plr, pwd) == (values.lr[group], values.weight_decay[group]), name
        if group == "hidden":
            m = p.infshape.width_mult()
            assert plr == pytest.approx(lr / (math.sqrt(m) if rule == "spectral" else m)), name
            assert plr * pwd == pytest.approx(lr * wd), name  # the same shrink per step at every width
    for key, value in MUON_SETTINGS.items():
        assert opts[0].param_groups[0][key] == value
    assert opts[1].defaults["betas"] == ADAMW_BETAS and opts[1].defaults["eps"] == ADAMW_EPS


def test_adamw_groups_agree_with_mups_MuAdamW():
    width, lr, wd = 64, 0.01, 0.1
    model = with_base_shapes(TinyLM(width))
    mu.init_weights(model, width=width, base_width=BASE_WIDTH, init_std=0.02)
    ours = settings(mu.optimizers(model, width=width, base_width=BASE_WIDTH, lr=lr, weight_decay=wd,
                                  optimizer="adamw"))
    theirs = settings([mup.MuAdamW(model.parameters(), lr=lr, weight_decay=wd)])
    for name, p in model.named_parameters():
        assert ours[id(p)][0] == "AdamW"
        assert ours[id(p)][2] == pytest.approx(theirs[id(p)][2]), name
        if EXPECTED[name] in ("hidden", "readout"):  # mup decays everything; we spare embeddings, gains, biases
            assert ours[id(p)][3] == pytest.approx(theirs[id(p)][3]), name


def export_doc(cfg: TrialConfig) -> dict:
    """What `telescope export` states for a trial config's width (its `at_width` groups and its
    `optimizers` block), through JSON."""
    s = scaling_for(cfg)
    at_width = {"width_mult": s.width_mult, "lr": s.lr, "weight_decay": s.weight_decay, "output_mult": s.output_mult,
                "optimizer_of_group": optimizer_of_group(cfg.optimizer)}
    doc = {"width": cfg.width, "base_width": cfg.base_width, "at_width": at_width,
           "optimizers": optimizer_settings(cfg.optimizer)}
    return json.loads(json.dumps(doc))


def state(optimizers) -> list:
    """Everything an optimizer is made of but its parameters' identities: class, defaults, groups."""
    return [(type(o), o.defaults, [{k: (v if k != "params" else [tuple(p.shape) for p in v]) for k, v in g.items()}
                                   for g in o.param_groups]) for o in optimizers]


def assert_same_optimizers(ours, theirs):
    assert state(ours) == state(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert [[id(p) for p in g["params"]] for g in a.param_groups] == \
            [[id(p) for p in g["params"]] for g in b.param_groups]


@pytest.mark.parametrize("changes", [dict(), dict(hidden_lr_rule="adam-mup"), dict(optimizer="adamw"),
                                     dict(parameterization="sp")])
def test_optimizers_from_an_export_equal_the_trials_own(changes):
    cfg = TrialConfig(width=96, base_width=32, head_dim=32, depth=1, seq_len=16, lr=0.013, weight_decay=0.07,
                      **changes)
    model = build_model(cfg, VOCAB)
    assert_same_optimizers(mu.optimizers_from_export(export_doc(cfg), model), build_optimizers(model, cfg))


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_file_round_trips_to_the_trials_optimizers(real_sweep, tmp_path, fmt):
    width = 128  # past the calibration width, as a user's run would be
    doc = Sweep.open(real_sweep).export(width)
    path = tmp_path / f"export.{fmt}"
    path.write_text(render(doc, fmt))
    spec = Sweep.open(real_sweep).spec
    cfg = spec.trial_config(width, doc["hyperparameters"], spec.seeds[0])
    model = build_model(cfg, 256)
    assert_same_optimizers(mu.optimizers_from_export(path, model), build_optimizers(model, cfg))


def test_export_of_another_width_or_an_old_document_is_refused():
    cfg = TrialConfig(width=64, base_width=32, head_dim=32, depth=1, seq_len=16)
    doc = export_doc(cfg.replace(width=128))
    with pytest.raises(ConfigError, match="lm_head multiplies the logits by 0.5, but this width wants 0.25"):
        mu.optimizers_from_export(doc, build_model(cfg, VOCAB))
    del doc["at_width"]["optimizer_of_group"]
    with pytest.raises(ConfigError, match="at_width.optimizer_of_group: missing from the export document"):
        mu.optimizers_from_export(doc, build_model(cfg, VOCAB))


WIDTHS = [16, 32, 64]


@pytest.fixture(scope="module")
def tiny_check():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (3, 4, 17), generator=generator)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    return mu.coord_check(lambda width: TinyLM(width, depth=1), WIDTHS, base_width=BASE_WIDTH, lr=0.02,
                          init_std=0.05, batches=batches, steps=2, seeds=1, hidden_lr_rules=("adam-mup", "spectral"))


def test_coord_check_runs_on_a_custom_model(tiny_check):
    check = tiny_check
    assert check.variants == ["mup/adam-mup", "mup/spectral", "sp"] and check.widths == WIDTHS
    layers = ["tok_emb", "blocks.attn.qkv", "blocks.attn.proj", "blocks.mlp.gate", "blocks.mlp.up",
              "blocks.mlp.down", "lm_head"]
    assert check.layers == {"scale": layers, "delta": layers, "update": layers}
    for metric in check.layers:
        for variant in check.variants:
            for layer in layers:
                v = torch.tensor(check.values[metric][variant][layer])
                assert v.shape == (3, len(WIDTHS)) and torch.all(torch.isfinite(v))
                assert torch.all(v[1:] > 0) and (metric == "scale" or torch.all(v[0] == 0))
    # the readout starts at init_std: the initial logits grow ~ sqrt(m) under SP, and muP's 1/m
    # output multiplier turns that into ~ 1/sqrt(m) (widths 16 -> 64: 4x)
    mup_logits = check.values["scale"]["mup/spectral"]["lm_head"][0]
    sp_logits = check.values["scale"]["sp"]["lm_head"][0]
    assert mup_logits[-1] / mup_logits[0] == pytest.approx(0.5, rel=0.3)
    assert sp_logits[-1] / sp_logits[0] == pytest.approx(2.0, rel=0.3)
    assert check.summary()["scale"]["sp"]["worst_abs_slope"] > 0.3
    # as on the built-in GPT: under the paper's rule (lr / m) a bias-free hidden matrix's own update
    # shrinks ~ 1/sqrt(width), under the spectral rule it stays flat (measured over three batch
    # seeds: -0.50 .. -0.70 against -0.19 .. +0.00)
    for layer in ("blocks.attn.qkv", "blocks.attn.proj", "blocks.mlp.gate"):
        for t in (1, 2):
            paper = check.spread("update", "mup/adam-mup", layer, t).slope
            spectral = check.spread("update", "mup/spectral", layer, t).slope
            assert -0.85 < paper < -0.35 and abs(spectral) < 0.3, (layer, t, paper, spectral)
    json.dumps(check.to_dict(), allow_nan=False)


def test_coord_check_figure_keeps_legends_off_the_data(tiny_check):
    fig = figure(tiny_check, max_steps_shown=1)  # a row per metric; more rows place legends alike
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    whole = fig.bbox
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(legend.overlaps(box) for box in boxes), ax.get_title()
        assert whole.x0 <= legend.x0 and legend.x1 <= whole.x1 and whole.y0 <= legend.y0 and legend.y1 <= whole.y1


def test_coord_check_rejects_bad_input():
    batches = [(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))]
    kw = dict(base_width=BASE_WIDTH, lr=0.01, init_std=0.02, steps=1)
    with pytest.raises(ConfigError, match="batches: need one"):
        mu.coord_check(TinyLM, WIDTHS, batches=[], **kw)
    with pytest.raises(ConfigError, match="widths: need at least two"):
        mu.coord_check(TinyLM, [32, 32], batches=batches, **kw)
    with pytest.raises(ConfigError, match="layers: no module named 'blocks.9'"):
        mu.coord_check(TinyLM, WIDTHS, batches=batches, layers={"x": ["blocks.9"]}, **kw)
    with pytest.raises(ConfigError, match="layers: x: the module.* never ran"):
        mu.coord_check(lambda w: TinyLM(w, depth=1), WIDTHS, batches=batches, layers={"x": ["blocks"]}, **kw)


def test_coord_check_runs_on_the_custom_python_example_model():
    # examples/custom_python's decoder (RMSNorm, SwiGLU, rotary): the model a user copies
    from examples.custom_python.model import Decoder

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (2, 4, 17), generator=generator)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    check = mu.coord_check(
        lambda width: Decoder(vocab=VOCAB, width=width, depth=1, head_dim=8, ffn_mult=2, seq_len=16, rope_base=1e4),
        WIDTHS, base_width=BASE_WIDTH, lr=0.02, init_std=0.05, batches=batches, steps=2, seeds=1,
        hidden_lr_rules=("spectral",))
    assert "readout" in check.layers["update"] and any(n.startswith("blocks.") for n in check.layers["update"])
    for variant in check.variants:
        for layer in check.layers["update"]:
            v = torch.tensor(check.values["update"][variant][layer])
            assert v.shape == (3, len(WIDTHS)) and torch.all(torch.isfinite(v)) and torch.all(v[1:] > 0)
    # muP's readout multiplier: the initial logits shrink with width under muP, grow under SP
    mup, sp = (check.values["scale"][v]["readout"][0] for v in ("mup/spectral", "sp"))
    assert mup[-1] < mup[0] and sp[-1] > sp[0]
