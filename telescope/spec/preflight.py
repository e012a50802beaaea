"""Everything about a spec that can be checked before Ray starts, beyond its TOML:

- the built-in GPT: that the corpus it names exists, reads, and holds a window of seq_len tokens
  in both splits, and that every level's workers can share its batch (and micro-batches);
- a user's trainable: that its working_dir is a directory, that its Python function imports
  (which runs the module's top level here, as a worker will), or that its command's program
  exists and its placeholders fill in for a trial.

Without this, a missing `training.data` path (or a misspelt module) started Ray and failed every
trial in milliseconds, and the sweep then stopped blaming the ranges. `plan`, `run` and `resume`
call it, so all fail in the same one line, naming the spec field.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from telescope.core.corpus import check_corpus
from telescope.core.trainable import (
    TrialContext, find_program, import_function, placeholder_values, render_command,
)
from telescope.errors import ConfigError
from telescope.spec.fields import spec_path
from telescope.spec.sweep import SweepSpec


def preflight(spec: SweepSpec) -> None:
    """Raise ConfigError (field named as in the spec, e.g. "training.data") if a trial of `spec`
    is bound to fail for a reason no trial could change."""
    if not spec.trainable.builtin:
        check_trainable(spec)
        return
    fixed = spec.fixed
    try:
        for resources in spec.resources:
            fixed.micro_batches(resources.workers)
        check_corpus(fixed.data, fixed.vocab_size, fixed.val_frac, fixed.seq_len)
    except ConfigError as err:
        raise ConfigError(spec_path(err.field, spec.axis_names), err.message) from None


def check_trainable(spec: SweepSpec) -> None:
    """A user's trainable can be reached from here: see the module docstring."""
    trainable = spec.trainable
    code_dir = Path(trainable.working_dir).resolve()
    if not code_dir.is_dir():
        raise ConfigError("trainable.working_dir",
                          f"{trainable.working_dir!r} is not a directory (seen from {os.getcwd()}); give the "
                          "directory that holds your code, relative to where telescope runs")
    if trainable.kind == "python":
        import_function(trainable.function, str(code_dir))
        return
    point = {a.name: a.low for a in spec.axes}
    config = spec.trial_config(spec.base_width, point, spec.seeds[0])
    ctx = TrialContext.create("preflight", config, point, trainable.settings_dict(), code_dir / "trials" / "preflight")
    try:
        argv = render_command(trainable.command, placeholder_values(ctx, sys.executable))
    except (ValueError, KeyError, IndexError, AttributeError) as err:
        raise ConfigError("trainable.command", f"its placeholders do not fill in ({type(err).__name__}: {err}); "
                                               "check their format specs, e.g. {lr:.3e}") from None
    if find_program(argv[0], str(code_dir)) is None:
        where = f"under working_dir {code_dir}" if os.sep in argv[0] else "on PATH"
        raise ConfigError("trainable.command",
                          f"program {argv[0]!r} not found {where}; install it, fix the name, or give its path "
                          "(\"{python}\" is the interpreter telescope runs under)")
