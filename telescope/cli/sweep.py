"""`telescope plan | run | resume | status | export`: the sweep commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from telescope.core.memory import DEFAULT_GPU_MEMORY_GB
from telescope.errors import ConfigError

_ADDRESS_HELP = (
    "Ray cluster to join ('auto', 'HOST:PORT' or 'ray://HOST:PORT'); "
    "default: start a private local Ray on this machine"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="levels, trials and FLOPs of a sweep before anything runs")
    p.add_argument("spec", help="sweep spec (TOML), e.g. sweeps/demo.toml")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--gpu-memory", type=float, default=DEFAULT_GPU_MEMORY_GB, metavar="GB",
                   help="memory of one GPU in GB (10^9 bytes), which each level's per-worker memory estimate "
                        f"is held to (default {DEFAULT_GPU_MEMORY_GB:g})")
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser("run", help="run a telescoping sweep, recording every trial in DIR")
    p.add_argument("spec", help="sweep spec (TOML), e.g. sweeps/demo.toml")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (ledger, spec copy)")
    add_ray_args(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("resume", help="finish an interrupted sweep from its directory")
    p.add_argument("dir", metavar="DIR")
    add_ray_args(p)
    p.set_defaults(func=cmd_resume)

    p = subparsers.add_parser("status", help="where a sweep stands: per level done/failed/diverged, optimum")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("export", help="the transferred hyperparameters for the width you will train")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--width", type=int, help="width to export for (default: the spec's target_width)")
    p.add_argument("--format", default="json", choices=("json", "yaml", "toml"))
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--extrapolate", action="store_true",
                   help="also fit the optimum's drift over the levels (x*(n) = x_inf - alpha/n, or c * n^alpha where 3+ levels "
                        "agree with it better) and predict x*(width)")
    p.add_argument("--at-calibration", action="store_true",
                   help="export the calibration optimum unchanged even on an axis whose optimum the levels measure "
                        "drifting with width (by default such an axis follows the drift's prediction for --width)")
    p.set_defaults(func=cmd_export)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=_ADDRESS_HELP)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all); ignored with --address")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def cmd_plan(args: argparse.Namespace) -> int:
    from telescope.spec.plan import format_plan, plan
    from telescope.spec.preflight import preflight
    from telescope.spec.sweep import load_spec

    if not args.gpu_memory > 0:
        raise ConfigError("--gpu-memory", f"must be a positive number of GB; got {args.gpu_memory:g}")
    spec = load_spec(args.spec)
    preflight(spec)
    p = plan(spec, gpu_memory_gb=args.gpu_memory)
    print(json.dumps(p.to_dict(), indent=2) if args.json else format_plan(p))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from telescope.api import Sweep

    sweep = Sweep.create(args.spec, args.out)  # a bad spec fails here, before Ray and torch load
    return _report(sweep.run(**ray_kwargs(args)), Path(args.out))


def cmd_resume(args: argparse.Namespace) -> int:
    from telescope.api import Sweep

    return _report(Sweep.open(args.dir).resume(**ray_kwargs(args)), Path(args.dir))


def cmd_status(args: argparse.Namespace) -> int:
    from telescope.api import Sweep
    from telescope.read.status import format_status

    status = Sweep.open(args.dir).status()
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from telescope.api import Sweep
    from telescope.read.export import render
    from telescope.store.files import atomic_write

    if args.width is not None and args.width <= 0:
        raise ConfigError("--width", f"must be a positive width; got {args.width}")
    doc = Sweep.open(args.dir).export(args.width, extrapolate=args.extrapolate, follow_drift=not args.at_calibration)
    for warning in doc.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    text = render(doc, args.format)
    if args.output:
        atomic_write(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def ray_kwargs(args: argparse.Namespace) -> dict:
    from telescope.run.progress import Progress

    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError("--num-cpus", f"must be a positive number of CPUs; got {args.num_cpus}")
    return {"address": args.address, "num_cpus": args.num_cpus, "progress": Progress(quiet=args.quiet)}


def _report(state, out: Path) -> int:
    from telescope.core.noise import level_noise

    final = state.levels[-1]
    noise = level_noise(final)  # the optimum to the digits its uncertainty allows, the loss with its seed spread
    where = "bracketed" if final.bracketed else "NOT bracketed: on an edge of its grid, see `telescope export`"
    print(f"sweep complete: optimum at width {final.width}: {noise.text()} (loss {noise.loss.text()}, {where})")
    for note in noise.notes:
        print(f"  {note}")
    print(f"ledger: {out / 'trials.parquet'}; next: telescope export {out} [--width W]")
    return 0
