"""`telescope verify DIR --width W`: a small scan around the export at width W, and its verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from telescope.cli.sweep import add_ray_args, ray_kwargs
from telescope.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help="check the export at a width of your choosing: is it within noise of a small scan's best?",
        description="Train a small 1-D scan at width W around the exported value of one axis (lr by default; "
                    "the other axes at their exported values), several seeds each, through the same dispatcher "
                    "as a sweep, into DIR/verify/W/ (re-running skips every recorded trial). Prints the scan and "
                    "whether the exported value's mean loss is within noise, 2*sigma*sqrt(2/n), of the best "
                    "mean (sigma: the seed std pooled over the points); writes DIR/verify/W/verify.json and a "
                    "figure.",
    )
    p.add_argument("dir", metavar="DIR", help="a finished sweep directory (the --out of `telescope run`)")
    p.add_argument("--width", type=int, required=True, help="width to check at (a multiple of head_dim)")
    p.add_argument("--points", type=int, default=5,
                   help="odd number of scan values; the middle one is the exported value (default 5)")
    p.add_argument("--seeds", default="2",
                   help="a count N (seeds 0..N-1) or a comma list such as 3,4 (default 2: seeds 0 and 1)")
    p.add_argument("--span", type=float,
                   help="how far the scan reaches either side of the exported value: a factor on a log axis "
                        "(lr / SPAN .. lr * SPAN), a distance on a linear one (default: two of the calibration "
                        "level's grid spacings between neighbouring values)")
    p.add_argument("--axis", help="the swept axis to scan (default: lr, or the first axis if lr is not swept)")
    p.add_argument("--out", metavar="FILE", help="the figure's path (default DIR/verify/W/verify.png)")
    p.add_argument("--json", action="store_true", help="print verify.json instead of the table")
    add_ray_args(p)
    p.set_defaults(func=cmd_verify)


def parse_seeds(text: str) -> tuple[int, ...]:
    """"2" -> (0, 1); "3,4" -> (3, 4)."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return tuple(range(count))
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError("seeds", f"must be a count >= 1 or a comma list of seeds such as 0,1; got {text!r}"
                          ) from None


def cmd_verify(args: argparse.Namespace) -> int:
    from telescope.read.verify import FIGURE_FILE, format_verify, judge, plan_scan, plot_verify, write_result

    # Planned first, so that a bad option fails in one line before Ray and torch load.
    plan = plan_scan(args.dir, args.width, axis=args.axis, points=args.points, seeds=parse_seeds(args.seeds),
                     span=args.span)
    kwargs = ray_kwargs(args)
    from telescope.run.verify import run_scan

    doc = judge(plan, run_scan(plan, **kwargs))
    doc["figure"] = str(plot_verify(doc, Path(args.out) if args.out else plan.directory / FIGURE_FILE))
    result = write_result(plan, doc)
    if args.json:
        print(result.read_text(encoding="utf-8"), end="")
    else:
        print(format_verify(doc))
    print(f"wrote {result} and {doc['figure']}", file=sys.stderr)
    return 0
