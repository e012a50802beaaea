"""`telescope` command line: a thin layer over the Python API.

Each command group lives in its own module under telescope.cli and exposes
`register(subparsers)`, which adds its sub-commands and sets `func(args) -> int` on each.
Bad input raises telescope.errors.ConfigError anywhere below; it is printed here as one line
on stderr with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from telescope.errors import ConfigError

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = ("trial", "coordcheck", "sweep", "compare", "report")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="telescope",
        description="Telescoping hyperparameter-transfer sweeps for Muon pretraining of muP transformers.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"telescope.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"telescope: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("telescope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
