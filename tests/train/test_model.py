"""The muP rules in telescope.core.scaling against what the built model and optimizers really do,
and against mup's own bookkeeping (infshape.width_mult, MuReadout, MuAdamW); and the built-in GPT's
path through telescope.train.muon_mup against an explicit reconstruction, bit for bit."""

import math

import mup
import pytest
import torch

from telescope.core.contract import TrialConfig
from telescope.core.corpus import load_corpus
from telescope.core.flops import matmul_params
from telescope.core.optimizers import ADAMW_BETAS, ADAMW_EPS
from telescope.train.data import train_batches
from telescope.train.model import GPT, build_model
from telescope.train.muon_mup import roles
from telescope.train.optim import MUON_KWARGS, Muon, build_optimizers, group_parameters, lr_factor
from telescope.core.scaling import GROUPS, scaling_for

VOCAB = 256
# small but big enough that an empirical std over a weight matrix is within a few percent
BASE = dict(base_width=32, head_dim=32, depth=2, seq_len=32, lr=0.01, init_std=0.02, weight_decay=0.1,
            hidden_lr_rule="adam-mup")  # the paper's rule, lr/m; the spectral default is tested against it


# the GPT's parameters by name suffix -> (group, Scaling field of its init std; None: gains start at 1)
EXPECTED_ROLES = {
    "wte.weight": ("embedding", "init_embedding"),
    "wpe.weight": ("embedding", "init_embedding"),
    "attn.q.weight": ("hidden", "init_attn_qkv"),
    "attn.k.weight": ("hidden", "init_attn_qkv"),
    "attn.v.weight": ("hidden", "init_attn_qkv"),
    "attn.o.weight": ("hidden", "init_attn_out"),
    "mlp.fc.weight": ("hidden", "init_mlp_in"),
    "mlp.proj.weight": ("hidden", "init_mlp_out"),
    "ln_1.weight": ("norm", None),
    "ln_2.weight": ("norm", None),
    "ln_f.weight": ("norm", None),
    "lm_head.weight": ("readout", "init_readout"),
}


def expected_role(name: str) -> tuple[str, str | None]:
    return next(role for suffix, role in EXPECTED_ROLES.items() if name == suffix or name.endswith("." + suffix))


def cfg_at(width: int, **changes) -> TrialConfig:
    return TrialConfig(width=width, **{**BASE, **changes})


def with_base_shapes(model: GPT, cfg: TrialConfig) -> GPT:
    """mup's bookkeeping on `model`: base and delta models on the meta device (mup reads only
    their shapes); SP is mup's base=None mode."""
    if cfg.parameterization == "sp":
        return mup.set_base_shapes(model, None, rescale_params=False)
    with torch.device("meta"):
        base = GPT(cfg.replace(width=cfg.base_width), VOCAB)
        delta = GPT(cfg.replace(width=2 * cfg.base_width), VOCAB)
    return mup.set_base_shapes(model, base, delta=delta, rescale_params=False)


def opt_settings(optimizers) -> dict[int, tuple[str, float, float]]:
    """id(param) -> (optimizer class name, peak lr, weight decay)."""
    out = {}
    for opt in optimizers:
        for g in opt.param_groups:
            for p in g["params"]:
                assert id(p) not in out, "a parameter is in two optimizer groups"
                out[id(p)] = (type(opt).__name__, g["lr"], g["weight_decay"])
    return out


@pytest.mark.parametrize("width", [64, 256])
def test_init_std_matches_scaling(width):
    cfg = cfg_at(width)
    s = scaling_for(cfg)
    model = build_model(cfg, VOCAB)
    m = width / cfg.base_width
    for name, p in model.named_parameters():
        _, field = expected_role(name)
        if field is None:
            assert torch.all(p == 1.0), name  # norm gains start at 1
        else:
            assert p.std().item() == pytest.approx(getattr(s, field), rel=0.06), name
            assert abs(p.mean().item()) < 0.1 * getattr(s, field)
    # the rule itself: hidden init ~ 1/sqrt(fan_in), embeddings fixed
    assert s.init_attn_qkv == pytest.approx(cfg.init_std / math.sqrt(m))
    assert s.init_mlp_out == pytest.approx(cfg.init_std / math.sqrt(m))  # fan_in 4d vs base 4*d0
    assert s.init_embedding == s.init_readout == cfg.init_std  # constant; the head has the 1/m multiplier


def test_mup_width_mult_and_readout_multiplier_match_scaling():
    cfg = cfg_at(128)
    s = scaling_for(cfg)
    model = with_base_shapes(build_model(cfg, VOCAB), cfg)
    assert s.width_mult == 4.0
    role_of = roles(model)
    for name, p in model.named_parameters():
        assert p.infshape.width_mult() == s.width_mult, name
        # mup's matrix-like (two width dims) is exactly our "hidden" group, the one Muon gets
        assert (p.infshape.ninf() == 2) == (role_of[name] == "hidden") == (expected_role(name)[0] == "hidden"), name
    assert isinstance(model.lm_head, mup.MuReadout)
    assert model.lm_head.output_mult == s.output_mult == 1 / model.lm_head.weight.infshape.width_mult()
    # the logits really are output_mult * W h: capture h and recompute
    seen = {}
    model.lm_head.register_forward_hook(lambda mod, inp, out: seen.update(h=inp[0], out=out))
    idx = torch.randint(0, VOCAB, (2, 16))
    logits = model(idx)
    assert torch.allclose(logits, s.output_mult * seen["h"] @ model.lm_head.weight.T, atol=1e-5)
    assert s.output_mult == pytest.approx(1 / 4)
    for block in model.blocks:
        assert block.attn.attn_scale == s.attn_scale == pytest.approx(1 / math.sqrt(cfg.head_dim))


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_optimizer_groups_match_scaling(optimizer):
    cfg = cfg_at(128, optimizer=optimizer)
    s = scaling_for(cfg)
    model = build_model(cfg, VOCAB)
    settings = opt_settings(build_optimizers(model, cfg))
    assert len(settings) == len(list(model.parameters()))  # nothing missing
    for name, p in model.named_parameters():
        group = expected_role(name)[0]
        kind, lr, wd = settings[id(p)]
        assert kind == ("Muon" if optimizer == "muon" and group == "hidden" else "AdamW"), name
        assert lr == pytest.approx(s.lr[group]) and wd == pytest.approx(s.weight_decay[group]), name
    m = cfg.width_mult
    assert s.lr["hidden"] == pytest.approx(cfg.lr / m)
    assert s.lr["embedding"] == s.lr["norm"] == s.lr["readout"] == cfg.lr
    # decay per step lr*wd is the same in every decayed group; embeddings and gains not decayed
    assert s.lr["hidden"] * s.weight_decay["hidden"] == pytest.approx(cfg.lr * cfg.weight_decay)
    assert s.weight_decay["readout"] == cfg.weight_decay
    assert s.weight_decay["embedding"] == s.weight_decay["norm"] == 0.0


def test_adamw_lrs_agree_with_mups_MuAdamW():
    cfg = cfg_at(128, optimizer="adamw")
    model = with_base_shapes(build_model(cfg, VOCAB), cfg)
    ours = opt_settings(build_optimizers(model, cfg))
    theirs = opt_settings([mup.MuAdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)])
    for name, p in model.named_parameters():
        assert ours[id(p)][1] == pytest.approx(theirs[id(p)][1]), name  # lr, MuReadout included
        if expected_role(name)[0] in ("hidden", "readout"):  # the groups we decay
            assert ours[id(p)][2] == pytest.approx(theirs[id(p)][2]), name


def test_spectral_rule_differs_by_sqrt_m_on_hidden_lr_only():
    for width in (64, 256):
        adam = scaling_for(cfg_at(width))
        spec = scaling_for(cfg_at(width, hidden_lr_rule="spectral"))
        m = width / BASE["base_width"]
        assert spec.lr["hidden"] / adam.lr["hidden"] == pytest.approx(math.sqrt(m))
        assert spec.lr["hidden"] == pytest.approx(BASE["lr"] / math.sqrt(m))
        for g in GROUPS[1:]:
            assert spec.lr[g] == adam.lr[g]
        same = {k: v for k, v in spec.to_dict().items() if k not in ("lr", "weight_decay")}
        assert same == {k: v for k, v in adam.to_dict().items() if k not in ("lr", "weight_decay")}
    # AdamW has no spectral variant: the rule only concerns Muon's orthogonalized update
    a = scaling_for(cfg_at(256, optimizer="adamw", hidden_lr_rule="spectral"))
    assert a.lr["hidden"] == pytest.approx(BASE["lr"] / 8)


def test_sp_has_no_width_scaling():
    cfg = cfg_at(256, parameterization="sp")
    s = scaling_for(cfg)
    model = with_base_shapes(build_model(cfg, VOCAB), cfg)
    assert s.width_mult == 1.0 and s.output_mult == 1.0 == model.lm_head.output_mult
    assert s.attn_scale == pytest.approx(1 / math.sqrt(cfg.head_dim))
    assert set(s.lr.values()) == {cfg.lr}
    for name, p in model.named_parameters():
        assert p.infshape.width_mult() == 1, name  # mup's SP mode: base = the model itself
        _, field = expected_role(name)
        if field is not None:
            assert getattr(s, field) == cfg.init_std
            assert p.std().item() == pytest.approx(cfg.init_std, rel=0.06), name
    settings = opt_settings(build_optimizers(model, cfg))
    assert {lr for _, lr, _ in settings.values()} == {cfg.lr}


def test_parameter_routing():
    cfg = cfg_at(64)
    model = build_model(cfg, VOCAB)
    groups = group_parameters(model)
    assert roles(model) == {name: expected_role(name)[0] for name, _ in model.named_parameters()}
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    assert len(groups["hidden"]) == 6 * cfg.depth  # q, k, v, o, MLP in, MLP out per block
    hidden = [m.weight for b in model.blocks for m in (b.attn.q, b.attn.k, b.attn.v, b.attn.o, b.mlp.fc, b.mlp.proj)]
    assert {id(p) for p in groups["hidden"]} == {id(p) for p in hidden}
    assert groups["embedding"] == [model.wte.weight, model.wpe.weight]
    assert groups["readout"] == [model.lm_head.weight]
    assert len(groups["norm"]) == 2 * cfg.depth + 1 and all(p.ndim == 1 for p in groups["norm"])
    muon, adamw = build_optimizers(model, cfg)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for p in groups["hidden"]}
    assert model.n_matmul_params() == matmul_params(cfg.width, cfg.depth, VOCAB, cfg.mlp_ratio)


def test_attention_is_causal_and_init_is_seeded():
    cfg = cfg_at(64, init_std=0.2)
    a, b = build_model(cfg, VOCAB), build_model(cfg, VOCAB)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q)
    c = build_model(cfg.replace(seed=1), VOCAB)
    assert not torch.equal(a.wte.weight, c.wte.weight)
    idx = torch.randint(0, VOCAB, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % VOCAB
    out, out2 = a(idx), a(changed)
    assert torch.allclose(out[0, :10], out2[0, :10], atol=1e-6)
    assert not torch.allclose(out[0, 10:], out2[0, 10:], atol=1e-3)


@pytest.mark.parametrize("d", [64, 256])
def test_batched_muon_matches_torch_muon_bit_for_bit(d):
    # same-shape stacks, tall (4d x d) and wide (d x 4d) sharing one stack, and a lone matrix
    shapes = [(d, d)] * 4 + [(4 * d, d)] * 2 + [(d, 4 * d)] * 2 + [(3, d)]
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(0.02 * torch.randn(*s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    opts = [cls(params, lr=0.02, weight_decay=0.1, **MUON_KWARGS)
            for cls, params in ((Muon, ours), (torch.optim.Muon, theirs))]
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for opt in opts:
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert all(not torch.equal(p, s) for p, s in zip(ours, start))  # and they did move


def test_lr_schedule():
    cfg = TrialConfig(steps=100, warmup_frac=0.1, final_lr_frac=0.1)
    f = [lr_factor(s, cfg) for s in range(cfg.steps)]
    assert f[0] == pytest.approx(1 / 11)  # from ~0
    assert all(b > a for a, b in zip(f[:10], f[1:11]))  # linear warmup rises...
    assert f[1] - f[0] == pytest.approx(f[9] - f[8])  # ...linearly
    assert f[10] == 1.0 == max(f)  # peak at the end of warmup
    assert all(b < a for a, b in zip(f[10:-1], f[11:]))  # then decays monotonically
    assert f[-1] == pytest.approx(0.1)  # to final_lr_frac at the last step
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))  # cosine
    no_warmup = TrialConfig(steps=10, warmup_frac=0.0, final_lr_frac=0.0)
    assert lr_factor(0, no_warmup) == 1.0 and lr_factor(9, no_warmup) == pytest.approx(0.0, abs=1e-12)


def reference_gpt(cfg: TrialConfig) -> tuple[GPT, list[torch.optim.Optimizer]]:
    """The GPT and its optimizers built by hand from telescope.core.scaling, without
    telescope.train.muon_mup: every parameter drawn from its Scaling field in named_parameters()
    order, the optimizer groups from EXPECTED_ROLES."""
    s = scaling_for(cfg)
    with torch.device("meta"):
        model = GPT(cfg, VOCAB)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            _, field = expected_role(name)
            if field is None:
                p.fill_(1.0)
            else:
                p.normal_(0.0, getattr(s, field), generator=generator)
    params = {g: [p for n, p in model.named_parameters() if expected_role(n)[0] == g] for g in GROUPS}

    def group(g):
        return {"params": params[g], "lr": s.lr[g], "peak_lr": s.lr[g], "weight_decay": s.weight_decay[g]}

    adamw = torch.optim.AdamW([group(g) for g in GROUPS if g != "hidden" or cfg.optimizer == "adamw"],
                              betas=ADAMW_BETAS, eps=ADAMW_EPS, fused=True)
    # Newton-Schulz in fp32: what ns_dtype "auto" resolves to on the CPU these tests run on
    muon = Muon([group("hidden")], ns_dtype="fp32", **MUON_KWARGS)
    return model, [adamw] if cfg.optimizer == "adamw" else [muon, adamw]


@pytest.fixture
def one_thread():
    """One torch thread: a tiny model on shared cores runs many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("changes", [dict(hidden_lr_rule="spectral"), dict(optimizer="adamw"),
                                     dict(parameterization="sp")])
def test_builtin_gpt_through_the_library_is_the_reference_bit_for_bit(changes, one_thread):
    cfg = cfg_at(64, seq_len=16, batch_size=4, seed=3, **changes)
    model = build_model(cfg, VOCAB)
    opts = build_optimizers(model, cfg)
    ref, ref_opts = reference_gpt(cfg)
    assert model.lm_head.output_mult == ref.lm_head.output_mult == (
        1 / (cfg.width / cfg.base_width) if cfg.parameterization == "mup" else 1.0)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    keys = ("lr", "peak_lr", "weight_decay", "betas", "eps", "fused", "momentum", "nesterov", "ns_steps",
            "ns_coefficients", "adjust_lr_fn")
    names = {id(p): n for m in (model, ref) for n, p in m.named_parameters()}
    for opt, ref_opt in zip(opts, ref_opts, strict=True):
        assert type(opt) is type(ref_opt) and getattr(opt, "ns_dtype", None) == getattr(ref_opt, "ns_dtype", None)
        for g, h in zip(opt.param_groups, ref_opt.param_groups, strict=True):
            assert [names[id(p)] for p in g["params"]] == [names[id(p)] for p in h["params"]]
            assert {k: g.get(k) for k in keys} == {k: h.get(k) for k in keys}
    batches = train_batches(load_corpus(cfg.data), cfg.batch_size, cfg.seq_len, cfg.seed)
    for _, (x, y) in zip(range(3), batches):
        losses = []
        for m, optimizers in ((model, opts), (ref, ref_opts)):
            loss = m(x, y)
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        assert losses[0] == losses[1]
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(p, q), n
