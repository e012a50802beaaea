"""`telescope report DIR --out OUTDIR`: figures and a markdown report of a sweep (telescope.read.report)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="figures and report.md: muTransfer curves, grids, optimum drift, loss vs width, compute"
    )
    p.add_argument("dir", metavar="DIR", help="sweep directory (the --out of `telescope run`)")
    # Directories are --out everywhere (run, compare); -o/--output stay as aliases for one release.
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="OUTDIR",
                   help="directory for report.md and its PNG figures (created if missing)")
    p.add_argument("--axes", metavar="A[,B]",
                   help="the one or two swept axes of the per-level grid figures (default: the first two)")
    p.add_argument("--compare", metavar="STUDY_DIR",
                   help="add the Muon-vs-AdamW section of a `telescope compare` study directory")
    p.add_argument("--coordcheck", action=argparse.BooleanOptionalAction, default=True,
                   help="also run a seconds-long Muon coordinate check at small widths (default: on)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from telescope.api import Sweep

    axes = [a.strip() for a in args.axes.split(",")] if args.axes else None
    data = Sweep.open(args.dir).report(args.out, axes=axes, coordcheck=args.coordcheck, compare=args.compare)
    print(f"wrote {data.markdown} with {len(data.figures)} figures", file=sys.stderr)
    for note in data.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
