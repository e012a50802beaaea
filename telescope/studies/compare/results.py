"""compare.json on disk: writing a study's table, reading a finished study back, and the table as
text.

Readers work from compare.json's layout (CompareTable.to_dict()), not from the dataclasses, so a
report can show a study from its directory alone, whatever version of the analysis wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telescope.errors import ConfigError
from telescope.store.directory import load_sweep_dir
from telescope.store.files import atomic_write
from telescope.studies.compare.analysis import CompareTable
from telescope.studies.compare.spec import KIND

RESULT_FILE = "compare.json"


def write_result(directory: str | Path, table: CompareTable) -> None:
    """Store the table as DIR/compare.json, atomically: a reader never sees half an analysis."""
    atomic_write(Path(directory) / RESULT_FILE, json.dumps(table.to_dict(), indent=2) + "\n")


@dataclass
class CompareResult:
    """A finished study as its directory holds it: the table of compare.json and its figures."""

    directory: Path
    table: dict[str, Any]  # compare.json's content
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG that exists


def load_compare(directory: str | Path) -> CompareResult:
    """Read a study directory's compare.json and the figures it lists (those still present)."""
    directory = Path(directory)
    load_sweep_dir(directory, kind=KIND)  # a one-line error for anything but a compare study's directory
    path = directory / RESULT_FILE
    if not path.is_file():
        raise ConfigError(str(directory), f"has no {RESULT_FILE} yet; run `telescope compare SPEC --out {directory}`")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), f"is unreadable ({err}); run the study again to rewrite it") from None
    figures = {name: directory / file for name, file in table.get("figures", {}).items()
               if (directory / file).is_file()}
    return CompareResult(directory, table, figures)


def format_table(table: Mapping[str, Any]) -> str:
    """The study's answer as text, from compare.json's layout: R(B) per batch size and what it
    says about the claim."""
    cells = {(c["optimizer"], c["batch_size"]): c for c in table["cells"]}

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = [
        f"Muon vs AdamW at width {table['width']} (depth {table['depth']}, seq {table['seq_len']}), "
        f"{table['tokens_per_run']:,} tokens per run",
        f"target validation loss {table['target_loss']:.4f} ({table['target_rule']})",
        f"{'batch':>6} {'steps':>6} {'lr muon':>8} {'lr adamw':>8} {'T muon':>10} {'T adamw':>10} "
        f"{'steps muon':>10} {'steps adamw':>11} {'R':>6} {'R range':>13}",
    ]
    for r in table["ratios"]:
        b = r["batch_size"]
        m, a = cells[("muon", b)], cells[("adamw", b)]
        lines.append(
            f"{b:>6} {m['steps']:>6} {num(m['best_lr'], '.3g'):>8} {num(a['best_lr'], '.3g'):>8} "
            f"{num(r['tokens_muon'], ',.0f'):>10} {num(r['tokens_adamw'], ',.0f'):>10} "
            f"{num(m['steps_to_target'], '.1f'):>10} {num(a['steps_to_target'], '.1f'):>11} "
            f"{num(r['ratio'], '.3f'):>6} {_range(r['ratio_range']):>13}"
        )
    c = table["claim"]
    trend = "-" if c["trend_per_doubling"] is None else f"{c['trend_per_doubling']:+.3f}"
    matched, front = c["adamw_front_matched_by_muon"]
    lines += [
        f"R > 1 at {c['ratios_above_one'][0]} of {c['ratios_above_one'][1]} batch sizes; "
        f"R changes by {trend} per batch doubling; mean R {num(c['mean_ratio'], '.3f')}",
        f"tokens-vs-steps: Muon matches or beats {matched} of {front} points of AdamW's Pareto front",
        f"claim (R > 1 and not shrinking with B): {'holds' if c['holds'] else 'does not hold'} here",
    ]
    lines.append("R range: the R the evaluations bracketing each crossing allow, however the curves ran between them")
    lines += [f"note: {n}" for n in table["notes"]]
    return "\n".join(lines)


def _range(bounds: Sequence[float | None] | None) -> str:
    if bounds is None:
        return "-"
    lo, hi = ("?" if x is None else f"{x:.2f}" for x in bounds)
    return f"[{lo}, {hi}]"
