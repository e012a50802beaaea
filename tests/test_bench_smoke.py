"""The benchmark scripts start, and their quick modes run end to end and print their tables.

No benchmark numbers are checked here (they depend on the machine); the full benchmarks are run
by hand (see each script's docstring). Outputs go to tmp_path, never to bench/results/.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = ("engine.py", "orchestration.py", "transfer.py", "tracking.py", "gpu.py")


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def has_header(out: str, *words: str) -> bool:
    return any(all(w in line for w in words) for line in out.splitlines())


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts(script: str) -> None:
    out = run(str(BENCH / script), "--help", timeout=120).stdout
    assert out.startswith("usage:")


@pytest.mark.bench
def test_orchestration_quick(tmp_path: Path) -> None:
    out_csv = tmp_path / "orchestration.csv"
    out = run(str(BENCH / "orchestration.py"), "--quick", "--out", str(out_csv), timeout=600).stdout
    assert has_header(out, "contender", "slots", "trial s", "wall s", "util", "ovh/trial s")
    assert has_header(out, "contender", "startup s", "dispatch s", "e2e s", "util e2e")
    for name in ("telescope", "tune", "tune-reuse", "optuna", "sequential"):
        assert f"\n{name:>10}  " in out, f"no row for {name}"
    rows = csv_rows(out_csv)
    assert {r["contender"] for r in rows} == {"telescope", "tune", "tune-reuse", "optuna", "sequential"}
    assert all(int(r["trials"]) == 2 and int(r["failed"]) == 0 for r in rows)
    # never more trials at once than slots: utilisation must not come from oversubscription
    assert all(int(r["peak"]) <= int(r["slots"]) for r in rows)


@pytest.mark.bench
def test_transfer_quick(tmp_path: Path) -> None:
    out = run(str(BENCH / "transfer.py"), "--quick", "--results", str(tmp_path), timeout=600).stdout
    assert has_header(out, "rule", "method", "trials", "FLOPs", "loss", "delta", "within noise")
    assert has_header(out, "rule", "point", "loss", "delta_vs_grid_best")
    methods = {r["method"] for r in csv_rows(tmp_path / "transfer_quick.csv") if r["table"] == "calibration"}
    assert methods == {"telescoping", "brute force", "plain muP"}
    assert csv_rows(tmp_path / "transfer_trials_quick.csv")


@pytest.mark.bench
def test_engine_quick(tmp_path: Path) -> None:
    out_csv = tmp_path / "engine.csv"
    out = run(str(BENCH / "engine.py"), "--quick", "--out", str(out_csv), timeout=600).stdout
    assert has_header(out, "width", "opt", "step ms", "MFU", "ref ms", "ratio", "muon+%", "NS GFLOP")
    rows = csv_rows(out_csv)
    assert [(r["width"], r["optimizer"]) for r in rows] == [("64", "adamw"), ("64", "muon")]
    assert all(0 < float(r["mfu"]) and 0 < float(r["ratio"]) for r in rows)
    assert float(rows[1]["ns_gflop_per_step"]) > 0 == float(rows[0]["ns_gflop_per_step"])
    # Muon's own step against the old setdefault(zeros_like) buffer lookup, in the same run
    assert has_header(out, "Muon ms", "setdefault x")
    assert float(rows[1]["muon_step_ms"]) > 0 and float(rows[1]["setdefault_ratio"]) > 0
    assert rows[0]["setdefault_ratio"] == "nan"  # adamw: no Muon step


@pytest.mark.bench
def test_gpu_quick(tmp_path: Path) -> None:
    out_csv = tmp_path / "gpu.csv"
    out = run(str(BENCH / "gpu.py"), "--quick", "--out", str(out_csv), timeout=600).stdout
    assert has_header(out, "part", "setting", "step ms", "MFU (fp32)", "trials/h", "wall s", "speedup")
    assert "no GPU: the CPU's fp32 peak" in out
    rows = csv_rows(out_csv)
    steps = [r for r in rows if r["part"] == "step"]
    assert [(r["width"], r["setting"]) for r in steps] == [("32", "eager"), ("64", "eager")]
    assert all(0 < float(r["mfu"]) < 1 and float(r["step_ms"]) > 0 for r in steps)
    packing = [r for r in rows if r["part"] == "packing"]
    assert [r["setting"] for r in packing] == ["1 per CPU", "2 per CPU", "4 per CPU"]
    assert [int(r["trials"]) for r in packing] == [1, 2, 4] and all(float(r["trials_per_hour"]) > 0 for r in packing)
    workers = [r for r in rows if r["part"] == "workers"]
    assert [r["setting"] for r in workers] == ["1 worker (task)", "2 workers (Ray Train)"]
    assert all(float(r["trial_s"]) > 0 for r in workers)
    # the same global batch on two workers computes what one worker computes
    assert float(workers[1]["final_loss"]) == pytest.approx(float(workers[0]["final_loss"]), rel=1e-4)


@pytest.mark.bench
def test_tracking_quick(tmp_path: Path) -> None:
    out = run(str(BENCH / "tracking.py"), "--quick", "--results", str(tmp_path), timeout=300).stdout
    assert has_header(out, "alpha", "rule", "tracked", "loss gap mean", "all bracketed", "trials mean")
    rows = csv_rows(tmp_path / "tracking_quick.csv")
    assert {r["rule"] for r in rows} == {"paper", "rings", "rings+drift"}
    # without noise and without drift every rule finds the optimum with the planned trials
    still = [r for r in rows if float(r["noise"]) == 0 and float(r["alpha"]) == 0]
    assert still and all(float(r["tracked"]) == 1.0 for r in still)
