"""`telescope coordcheck`: the muP coordinate check, muP beside standard parameterization.

    telescope coordcheck --widths 32 64 128 256 --steps 4 --hidden-lr-rule both -o coord.png [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from telescope.cli.trial import TRIAL_OPTIONS
from telescope.core.contract import COORDCHECK_DEFAULTS, HIDDEN_LR_RULES, TrialConfig
from telescope.errors import ConfigError

# the trial command's flags that make sense here (width, parameterization and the rule are what
# the check varies); defaults are the coordinate check's own
_FIELDS = ("optimizer", "lr", "init_std", "weight_decay", "base_width", "depth", "head_dim", "seq_len",
           "batch_size", "data", "vocab_size", "seed", "device", "num_threads")
_OPTIONS = [opt for opt in TRIAL_OPTIONS if opt[1] in _FIELDS]
_DEFAULTS = {**TrialConfig().to_dict(), **COORDCHECK_DEFAULTS}
_WIDTHS, _STEPS, _SEEDS = [32, 64, 128, 256], 4, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "coordcheck", help="check muP: per-layer activation scale across widths over the first steps",
        description="Train the real model for a few steps at several widths with the same base lr and "
                    "init std, under muP and under standard parameterization, and plot each layer type's "
                    "mean |activation|, its change since init and the change its own weight updates "
                    "cause, against width. Flat lines mean the parameterization transfers; the spread "
                    "is the slope of log2(value) against log2(width).",
    )
    p.add_argument("--widths", type=int, nargs="+", default=_WIDTHS, metavar="WIDTH",
                   help=f"default {' '.join(map(str, _WIDTHS))}")
    p.add_argument("--steps", type=int, default=_STEPS, help=f"optimizer steps, default {_STEPS}")
    p.add_argument("--seeds", type=int, default=_SEEDS, help=f"seeds to average over, default {_SEEDS}")
    p.add_argument("--hidden-lr-rule", choices=(*HIDDEN_LR_RULES, "both"), default=_DEFAULTS["hidden_lr_rule"],
                   help="Muon's hidden-matrix lr rule under muP; both: a column for each. "
                        f"default {_DEFAULTS['hidden_lr_rule']}")
    for flag, name, kind, choices in _OPTIONS:
        p.add_argument(flag, dest=name, type=kind, choices=choices, default=_DEFAULTS[name],
                       metavar=None if choices else name.upper(), help=f"default {_DEFAULTS[name]}")
    p.add_argument("-o", "--output", help="figure to write (.png, .pdf or .svg)")
    p.add_argument("--json", action="store_true", help="print the data and spreads as one JSON object")
    p.set_defaults(func=cmd_coordcheck)


def _check_output(path: str | None, want_json: bool) -> None:
    if path is None:
        if not want_json:
            raise ConfigError("output", "nothing to write: give -o FILE.png, --json, or both")
        return
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError("output", f"must end in .png, .pdf or .svg; got {path!r}")


def cmd_coordcheck(args: argparse.Namespace) -> int:
    from telescope.train.coordcheck import METRIC_LABELS, coord_check, plot  # torch

    _check_output(args.output, args.json)
    base = TrialConfig(**{name: getattr(args, name) for _, name, _, _ in _OPTIONS})
    rules = list(HIDDEN_LR_RULES) if args.hidden_lr_rule == "both" else [args.hidden_lr_rule]
    check = coord_check(base, args.widths, args.steps, args.seeds, hidden_lr_rules=rules)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        plot(check, args.output)
    if args.json:
        print(json.dumps({**check.to_dict(), "output": args.output}))
        return 0
    print(f"coordinate check: {check.optimizer}, base lr {check.lr:g}, init_std {check.init_std:g}, "
          f"widths {' '.join(map(str, check.widths))}, {check.steps} steps, {check.seeds} seed(s)")
    print(f"slope of log2(value) vs log2(width) after step {check.steps} (0 = flat), max/min in brackets:")
    summary = check.summary()
    for metric, layers in check.layers.items():
        print(f"  mean {METRIC_LABELS[metric]}")
        for variant in check.variants:
            cells = []
            for layer in layers:
                s = check.spread(metric, variant, layer, check.steps)
                cells.append(f"{layer} {s.slope:+.2f} ({s.ratio:.2f}x)")
            worst = summary[metric][variant]
            print(f"    {variant:<13} worst |slope| {worst['worst_abs_slope']:.2f} ({worst['worst_layer']}): "
                  + ", ".join(cells))
    if args.output:
        print(f"figure: {args.output}")
    return 0
