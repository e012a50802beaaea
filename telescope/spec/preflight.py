"""Everything about a spec that can be checked before Ray starts, beyond its TOML: today, that the
corpus it names exists, reads, and holds a window of seq_len tokens in both splits.

Without this, a missing `training.data` path started Ray and failed every trial in milliseconds,
and the sweep then stopped blaming the ranges. `plan` and `run` call it, so both fail in the same
one line, naming the spec field.
"""

from __future__ import annotations

from telescope.core.corpus import check_corpus
from telescope.errors import ConfigError
from telescope.spec.fields import spec_path
from telescope.spec.sweep import SweepSpec


def preflight(spec: SweepSpec) -> None:
    """Raise ConfigError (field named as in the spec, e.g. "training.data") if a trial of `spec`
    is bound to fail for a reason no trial could change."""
    fixed = spec.fixed
    try:
        check_corpus(fixed.data, fixed.vocab_size, fixed.val_frac, fixed.seq_len)
    except ConfigError as err:
        raise ConfigError(spec_path(err.field, spec.axis_names), err.message) from None
