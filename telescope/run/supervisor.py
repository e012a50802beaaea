"""Run a trainable's command and take its whole process group down with the Ray worker.

    python -I supervisor.py WORKER_PID -- PROGRAM ARG...

telescope.run.trainables starts this script as the leader of a new session and process group, and
it starts the command inside that group. The Ray worker that started it may be killed at any
moment (a time limit or Ctrl-C force-cancels its task; a controller killed with SIGKILL takes Ray
and its workers with it), and a process in its own session would outlive it. So the supervisor
asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), checks the parent's pid
between waits as well, and on either, or on SIGTERM, SIGINT or SIGHUP, kills its whole process
group, itself included: the command and everything the command started.

A dying Ray worker SIGKILLs its own direct children, this supervisor among them, before it can
do any of that. So a keeper, forked first into the same group, holds the read end of a pipe
whose write end only the supervisor holds: however the supervisor ends, the keeper reads end of
file at once and kills the group. (After a command that finished, that takes down anything it
left running in the background, too.)

Otherwise it exits as the command did (the same code, or the same signal). Stdlib only and run
with -I, so it starts in milliseconds and nothing on sys.path can shadow what it imports.
"""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


def _kill_group(*_: object) -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _ask_for_parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pid check below still notices
        pass


def _fork_keeper() -> None:
    """A child in our group that kills the group once we are gone, however we went."""
    read_end, write_end = os.pipe()  # not inherited by the command: os.pipe's ends close on exec
    if os.fork() == 0:
        os.close(write_end)
        while os.read(read_end, 1):
            pass
        _kill_group()
    os.close(read_end)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: supervisor.py WORKER_PID -- PROGRAM ARG...", file=sys.stderr)
        return 2
    worker = int(argv[0])
    if os.getpgrp() != os.getpid():  # killing "our" group would kill whoever started us
        print("supervisor.py: must lead its own process group (start it with start_new_session=True)",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _kill_group)
    _ask_for_parent_death_signal()
    if os.getppid() != worker:  # the worker died before the kernel was asked to tell us
        _kill_group()
    _fork_keeper()
    command = argv[2:]
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"telescope: cannot start {command[0]!r}: {err.strerror or err}", file=sys.stderr)
        return 127
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != worker:
                _kill_group()
    if code < 0:  # end the way the command ended, so the worker sees the same signal
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # these two have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
