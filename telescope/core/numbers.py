"""Small rules about numbers that several layers share, each written once.

- `SIGNIFICANT` digits: a swept value, a fingerprint and a grid point all round real numbers to
  the same precision, so a value computed twice (on resume, on another machine) names the same
  trial.
- `json_safe`: strict JSON has no NaN or infinity; a diverged trial's loss is written as null.
- `format_point`: how a point of hyperparameters reads in one line ("lr=0.0316, init_std=0.02").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SIGNIFICANT = 12


def round_sig(x: float) -> float:
    """`x` to SIGNIFICANT significant digits (the precision trial ids are made at)."""
    return float(f"{x:.{SIGNIFICANT}g}")


def canonical(value: Any) -> Any:
    """`value` with every float rounded by `round_sig`, through dicts and lists: what a
    fingerprint hashes, so float dust never renames a trial or a spec."""
    if isinstance(value, float):
        return round_sig(value)
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_point(point: Mapping[str, float], digits: int = 4) -> str:
    """"lr=0.0316, init_std=0.02": a point of hyperparameters in one line."""
    return ", ".join(f"{name}={value:.{digits}g}" for name, value in point.items())
