"""`telescope compare SPEC --out DIR`: Muon vs AdamW, tokens to a target loss across batch sizes."""

from __future__ import annotations

import argparse
import json
import sys

from telescope.cli.sweep import add_ray_args, ray_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="Muon vs AdamW: token ratio R(B) and the tokens-vs-steps trade-off across batch sizes",
        description="At one width, sweep a small lr grid per optimizer and batch size (every run the same "
                    "tokens), take each best lr's validation curve, and measure the tokens each optimizer "
                    "needs to reach a common target loss: R(B) = T_AdamW(B) / T_Muon(B). Writes "
                    "DIR/compare.json and figures; re-running skips every recorded trial.",
    )
    p.add_argument("spec", help="compare spec (TOML), e.g. sweeps/compare.toml")
    p.add_argument("--out", required=True, metavar="DIR", help="study directory (ledger, compare.json, figures)")
    add_ray_args(p)
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                   help="write ratio.png, tradeoff.png and curves.png into DIR (default: on)")
    p.add_argument("--json", action="store_true", help="print compare.json's table instead of a summary")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from telescope.studies.compare.results import RESULT_FILE, format_table
    from telescope.studies.compare.run import run_compare

    table = run_compare(args.spec, args.out, plot=args.plot, **ray_kwargs(args)).to_dict()
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(format_table(table))
    written = [RESULT_FILE, *table["figures"].values()]
    print(f"wrote {', '.join(f'{args.out}/{name}' for name in written)}", file=sys.stderr)
    return 0
