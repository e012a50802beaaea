"""Small rules about numbers that several layers share, each written once.

- `SIGNIFICANT` digits: a swept value, a fingerprint and a grid point all round real numbers to
  the same precision, so a value computed twice (on resume, on another machine) names the same
  trial.
- `json_safe`: strict JSON has no NaN or infinity; a diverged trial's loss is written as null.
- `format_point`: how a point of hyperparameters reads in one line ("lr=0.0316, init_std=0.02").
- `uncertainty_decimals`, `format_to`, `format_uncertain`: a measured number printed to the
  digits its uncertainty allows ("0.053 ± 0.008", not 0.05303311463939008).
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


def uncertainty_decimals(value: float, err: float, max_significant: int = 6) -> int | None:
    """Decimal places an uncertainty `err` leaves meaningful in `value`: down to err's first
    significant digit, or its second when that digit is 1 (0.012 keeps "0.012", not "0.01",
    which would understate it by a fifth); never more than `max_significant` digits of `value`
    (float dust in a noise-free uncertainty must not print 16 digits). None when `err` is not a
    positive finite number: the value then has no stated precision."""
    if not (math.isfinite(err) and err > 0 and math.isfinite(value)):
        return None
    exponent = math.floor(math.log10(err))
    lead = int(f"{err:.1e}"[0])  # the first digit as printed, immune to 0.1 / 10**-1 = 1.0000000000000002
    decimals = -exponent + (1 if lead == 1 else 0)
    if value != 0:
        decimals = min(decimals, max_significant - 1 - math.floor(math.log10(abs(value))))
    return decimals


def format_to(value: float, decimals: int | None, fallback_digits: int = 4) -> str:
    """`value` with `decimals` places (negative: rounded to tens, hundreds, ...); with None, to
    `fallback_digits` significant digits. A value that rounds to zero prints as 0, never -0."""
    if decimals is None:
        return f"{value:.{fallback_digits}g}"
    rounded = round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{rounded:.{max(decimals, 0)}f}"


def format_uncertain(value: float, err: float, fallback_digits: int = 4) -> str:
    """"2.469 ± 0.012": `value` to the precision its uncertainty `err` allows, the uncertainty
    beside it; just the value, to `fallback_digits` significant digits, when `err` is unknown."""
    decimals = uncertainty_decimals(value, err)
    if decimals is None:
        return format_to(value, None, fallback_digits)
    if round(err, decimals) == 0:  # below the digits worth printing: the value is as exact as shown
        return f"{value:.6g}"
    return f"{format_to(value, decimals)} ± {format_to(err, decimals)}"
