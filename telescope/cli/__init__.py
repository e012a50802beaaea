"""`telescope` command line: a thin layer over the Python API.

Each command group lives in its own module under telescope.cli and exposes
`register(subparsers)`, which adds its sub-commands and sets `func(args) -> int` on each.
What goes wrong below is printed here as one line on stderr, never as a traceback:

    ConfigError, LedgerError   telescope: error: MSG                    exit 2
    SweepStopped               telescope: stopped: MSG                  exit 3
    other TelescopeError       telescope: error: MSG                    exit 1
    Ctrl-C (SIGINT)            telescope: interrupted[; continue with: CMD]   exit 130
    SIGTERM                    telescope: terminated[; continue with: CMD]    exit 143
    stdout closed early        (silent, like other Unix tools)          exit 141

A command that writes a sweep, study or scan directory (run, resume, compare, verify) names the
command that picks it up again. Programmer errors (ValueError, TypeError, ...) keep their tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import shlex
import signal
import sys
import threading
from typing import TextIO

from telescope.errors import (
    ConfigError,
    LedgerError,
    SweepStopped,
    TelescopeError,
    Terminated,
)

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = ("trial", "coordcheck", "sweep", "verify", "compare", "report")

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool killed by SIGPIPE
EXIT_TERMINATED = 128 + signal.SIGTERM


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


def continue_command(args: argparse.Namespace) -> str | None:
    """The command that picks an interrupted run up where it stopped, or None if there is none.

    A sweep continues with `resume DIR` once its directory exists (before that, by running it
    again); a compare study and a verify scan by running them again (they skip every recorded
    trial). The cluster is named again when one was given: without it, resume would start a
    private local Ray instead.
    """
    if args.command == "run":
        from telescope.store.directory import META_FILE

        created = os.path.isfile(os.path.join(args.out, META_FILE))  # written last, when complete
        words = ["telescope", "resume", args.out] if created else ["telescope", "run", args.spec, "--out", args.out]
    elif args.command == "resume":
        words = ["telescope", "resume", args.dir]
    elif args.command == "compare":
        words = ["telescope", "compare", args.spec, "--out", args.out]
    elif args.command == "verify":  # running the same scan again skips what it recorded
        words = ["telescope", "verify", args.dir, "--width", str(args.width), "--points", str(args.points),
                 "--seeds", args.seeds]
        for option in ("span", "axis", "out"):
            if getattr(args, option) is not None:
                words += [f"--{option}", str(getattr(args, option))]
    else:
        return None
    if getattr(args, "address", None):
        words += ["--address", args.address]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Until a Dispatcher takes over (ray.init replaces it, the Dispatcher puts this back), SIGTERM
    # unwinds like Ctrl-C here too: a sweep killed while it loads its spec or imports torch
    # still releases its lock and says how to continue.
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigterm_before = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    if on_main_thread and sigterm_before != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, Terminated.handler)
    try:
        code = int(args.func(args) or 0)
        # Flushed here, not at interpreter exit, so that a reader that has gone away (`| head`)
        # is noticed where it can still be answered quietly.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        gone = _closed_pipes()
        if not gone:
            raise  # some other pipe broke (a connection, a child's): a real error, not `| head`
        for stream in gone:
            _discard(stream)
        return EXIT_BROKEN_PIPE
    except (ConfigError, LedgerError) as err:
        return _fail(2, f"error: {err}")
    except SweepStopped as err:
        return _fail(3, f"stopped: {err}")
    except TelescopeError as err:
        return _fail(1, f"error: {err}")
    except KeyboardInterrupt:
        return _fail(130, _with_hint("interrupted", args))
    except Terminated:
        return _fail(EXIT_TERMINATED, _with_hint("terminated", args))
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, sigterm_before if sigterm_before is not None else signal.SIG_DFL)


def _with_hint(what: str, args: argparse.Namespace) -> str:
    command = continue_command(args)
    return f"{what}; continue with: {command}" if command else what


def _fail(code: int, message: str) -> int:
    # Whatever the command left in stdout's buffer goes first: flushed at exit instead, into a
    # reader that has gone away, it would print a traceback after our one line.
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard(sys.stdout)
    except (OSError, ValueError):  # stdout closed or unusable: nothing of it to save
        pass
    try:
        print(f"telescope: {message}", file=sys.stderr, flush=True)
    except OSError:  # stderr is a closed pipe too: the exit status still tells
        _discard(sys.stderr)
    return code


def _closed_pipes() -> list[TextIO]:
    """stdout and/or stderr, where they are pipes whose reader has gone (poll says POLLERR)."""
    if not hasattr(select, "poll"):  # Windows: no way to ask, and stdout is the usual one
        return [sys.stdout]
    gone: list[TextIO] = []
    for stream in (sys.stdout, sys.stderr):
        try:
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                gone.append(stream)
        except (OSError, ValueError):  # not a real file (captured, closed): cannot be the pipe
            continue
    return gone


def _discard(stream: TextIO) -> None:
    """Point `stream`'s descriptor at /dev/null: Python's documented recipe for a closed pipe, so
    that the interpreter's last flush at exit, of data that can never be delivered, cannot fail."""
    try:
        with open(os.devnull, "wb") as devnull:  # dup2 keeps its own copy of the descriptor
            os.dup2(devnull.fileno(), stream.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
