"""Tiny trainables for the tests: a synthetic loss, a quadratic bowl in log space around an optimum
that drifts a little with width, plus a little seed noise, with a short reported curve. Seconds
for a whole sweep, so the tests exercise the plumbing (Ray, the ledger, the rule, resume, faults)
rather than a model.

`train` is the Python trainable ("tests.trainable_helpers:train"); tests/trainable_command.py is
the same loss as a standalone command. Both read their fault switches from [trainable.settings].
`processes_with` reads the process table, to show that no command outlives its trial.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from tests.sweep_helpers import ROOT, TINY_SPEC

STEPS = 5


def synthetic_loss(lr: float, init_std: float, width: int, base_width: int, seed: int) -> float:
    """The final loss of the synthetic trainables (tests/trainable_command.py repeats it)."""
    lr_opt = 0.01 * (width / base_width) ** -0.1
    bowl = math.log(lr / lr_opt) ** 2 + 0.5 * math.log(init_std / 0.02) ** 2
    return 2.0 + bowl + 0.001 * math.sin(12.9898 * seed + width)


def train(ctx):
    """A Python trainable. settings: raise_corner / diverge_corner = true make the high-lr corners
    raise (high init_std) or diverge (low init_std)."""
    lr, init_std = ctx.params["lr"], ctx.params["init_std"]
    if ctx.settings.get("raise_corner") and lr > 0.02 and init_std > 0.03:
        raise RuntimeError(f"synthetic failure at lr={lr:g}")
    final = synthetic_loss(lr, init_std, ctx.width, ctx.base_width, ctx.seed)
    diverges = ctx.settings.get("diverge_corner") and lr > 0.02 and init_std < 0.015
    assert (ctx.trial_dir / "context.json").is_file()
    for step in range(1, STEPS + 1):
        ctx.report(step, train_loss=10.0 * 4**step if diverges else final + 0.5**step)
    ctx.report(STEPS, val_loss=final)
    return {"final_loss": final, "tokens": STEPS * 64, "flops": 1e6 * ctx.width_mult**2,
            "hidden_lr": ctx.mup.lr["hidden"]}


def trainable_spec(tmp_path: Path, trainable: str, *, calibration_width: int = 32, time_limit_s: float | None = None,
                   name: str = "tiny.toml", rule: str = "") -> Path:
    """The tests' tiny sweep spec (widths from 16) with a [trainable] table (TOML text)."""
    resources = f"time_limit_s = {time_limit_s}\n" if time_limit_s else ""
    text = TINY_SPEC.format(calibration_width=calibration_width, seeds=1, sampler='"grid"', steps=10,
                            resources=resources, rule=rule)
    path = tmp_path / name
    path.write_text(text + "\n" + trainable)
    return path


# working_dir: the repository, wherever the tests run from (tests/ is a package there)
PYTHON_TRAINABLE = f"""\
[trainable]
kind = "python"
function = "tests.trainable_helpers:train"
version = "1"
working_dir = '{ROOT}'
metrics = ["hidden_lr"]
"""


def command_trainable(**settings: object) -> str:
    """A [trainable] table running tests/trainable_command.py with `settings`."""
    merged = {"faults": False, "sleep": 0.0, **settings}
    lines = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in merged.items())
    return f"""\
[trainable]
command = ["{{python}}", "tests/trainable_command.py", "--lr", "{{lr}}", "--init-std", "{{init_std}}",
           "--width", "{{width}}", "--base-width", "{{base_width}}", "--seed", "{{seed}}",
           "--out", "{{trial_dir}}", "--faults", "{{faults}}", "--sleep", "{{sleep}}"]
version = "1"
working_dir = '{ROOT}'

[trainable.settings]
{lines}"""


# ---- the process table: a command's processes, found by the trials directory in their argv


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line mentions `marker` (a sweep's
    trials directory, which a command's argv holds), read from /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if state != "Z" and marker in text:
            found[int(name)] = text
    return found


def wait_gone(marker: str, timeout: float = 20) -> list[str]:
    """[] once no process mentions `marker`; else the command lines still there at `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return list(left.values())


def wait_for(marker: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not processes_with(marker):
        assert time.monotonic() < deadline, f"no process mentioning {marker} within {timeout} s"
        time.sleep(0.05)
