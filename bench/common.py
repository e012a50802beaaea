"""Small helpers shared by the benchmarks: where results go, the machine line, tables and CSVs."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine_line() -> str:
    """Cores, load average and date: the conditions a table was measured under."""
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"machine: {os.cpu_count()} cores ({platform.machine()}), load average {load}, {now}, "
            f"Python {sys.version.split()[0]}")


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]  # NaN-free
    return statistics.median(vals) if vals else float("nan")


def fmt(value: Any, spec: str = ".3g") -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return format(value, spec)
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], formats: Mapping[str, str] | None = None,
          headers: Mapping[str, str] | None = None) -> str:
    """A plain fixed-width table: a header line, a rule, one line per row. `columns` are the rows'
    keys; `headers` renames them for display; `formats` are format specs for float cells."""
    formats, headers = formats or {}, headers or {}
    names = [headers.get(c, c) for c in columns]
    cells = [[fmt(r.get(c, ""), formats.get(c, ".3g")) for c in columns] for r in rows]
    widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.rjust(w) for n, w in zip(names, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
