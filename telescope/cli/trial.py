"""`telescope trial`: train one configuration and print what it reached.

    telescope trial --width 128 --lr 0.02 --init-std 0.02 --steps 300 [--json]
"""

from __future__ import annotations

import argparse
import json
import math

from telescope.core.contract import (
    DEVICES,
    HIDDEN_LR_RULES,
    OPTIMIZERS,
    PARAMETERIZATIONS,
    TrialConfig,
)
from telescope.core.numbers import json_safe

_DEFAULTS = TrialConfig()
# (flag, TrialConfig field, type, choices); defaults and validation come from TrialConfig
TRIAL_OPTIONS: list[tuple[str, str, type, tuple[str, ...] | None]] = [
    ("--width", "width", int, None),
    ("--base-width", "base_width", int, None),
    ("--depth", "depth", int, None),
    ("--head-dim", "head_dim", int, None),
    ("--seq-len", "seq_len", int, None),
    ("--batch-size", "batch_size", int, None),
    ("--steps", "steps", int, None),
    ("--lr", "lr", float, None),
    ("--init-std", "init_std", float, None),
    ("--weight-decay", "weight_decay", float, None),
    ("--optimizer", "optimizer", str, OPTIMIZERS),
    ("--parameterization", "parameterization", str, PARAMETERIZATIONS),
    ("--hidden-lr-rule", "hidden_lr_rule", str, HIDDEN_LR_RULES),
    ("--data", "data", str, None),
    ("--vocab-size", "vocab_size", int, None),
    ("--seed", "seed", int, None),
    ("--eval-interval", "eval_interval", int, None),
    ("--device", "device", str, DEVICES),
    ("--num-threads", "num_threads", int, None),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trial", help="train one configuration and report its loss",
        description="Train one model and print its final validation loss, tokens, FLOPs and wall time. "
                    "lr, init-std and weight-decay are base values: muP rescales them per layer group "
                    "from width / base-width.",
    )
    for flag, name, kind, choices in TRIAL_OPTIONS:
        default = getattr(_DEFAULTS, name)
        p.add_argument(flag, dest=name, type=kind, choices=choices, default=None, metavar=None if choices else name.upper(),
                       help=f"default {default}")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.set_defaults(func=cmd_trial)




def cmd_trial(args: argparse.Namespace) -> int:
    from telescope.core.corpus import load_corpus, unigram_entropy
    from telescope.train.trial import run_trial  # torch: imported by the command, not by --help

    cfg = TrialConfig(**{name: getattr(args, name) for _, name, _, _ in TRIAL_OPTIONS if getattr(args, name) is not None})
    entropy = unigram_entropy(load_corpus(cfg.data, cfg.vocab_size, cfg.val_frac))  # bad data fails fast
    result = run_trial(cfg)
    summary = result.summary()
    if args.json:
        out = {k: json_safe(v) for k, v in summary.items()}
        out["unigram_entropy"] = entropy
        out["config"] = cfg.to_dict()
        print(json.dumps(out))
        return 0
    rule = f", hidden lr rule {cfg.hidden_lr_rule}" if cfg.optimizer == "muon" and cfg.parameterization == "mup" else ""
    print(f"trial: width {cfg.width} (base {cfg.base_width}, {cfg.parameterization}{rule}), {cfg.optimizer}, "
          f"lr {cfg.lr:g}, init_std {cfg.init_std:g}, weight_decay {cfg.weight_decay:g}, "
          f"{cfg.steps} steps, seed {cfg.seed}")
    rows = [
        ("status", result.status + (f" ({result.error})" if result.error else "")),
        ("val loss", f"{result.final_loss:.4f} nats/token" if math.isfinite(result.final_loss) else "none (diverged)"),
        ("unigram entropy", f"{entropy:.4f} nats/token ({cfg.data}: the loss of token frequencies alone)"),
        ("train loss", f"{result.final_train_loss:.4f} (last step)"),
        ("steps", f"{result.steps_done} of {cfg.steps}"),
        ("tokens", f"{result.tokens:,}"),
        ("FLOPs", f"{result.flops:.3e} ({result.n_params:,} matmul params)"),
        ("wall time", f"{result.wall_time_s:.1f} s"),
        ("device", result.device),
    ]
    for label, value in rows:
        print(f"  {label:<16} {value}")
    return 0
