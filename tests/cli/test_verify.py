"""`telescope verify` end to end on a real small sweep, through a real local Ray."""

from __future__ import annotations

import json
import math
import shutil
import statistics

import pytest

from telescope.cli import main
from telescope.read.export import export
from telescope.spec.sweep import load_spec
from telescope.store.directory import open_sweep_dir
from telescope.store.ledger import Ledger
from telescope.store.lock import SweepLock
from tests.sweep_helpers import run_cli, tree_digest, write_spec

WIDTH = "32"


@pytest.fixture(scope="module")
def sweep(real_sweep, tmp_path_factory):
    """A copy of the session's finished sweep: verify writes into DIR/verify/, the shared one stays as it is."""
    out = tmp_path_factory.mktemp("verify") / "sweep"
    shutil.copytree(real_sweep, out)
    return out


def test_verify_scans_around_the_export_and_judges_it(sweep):
    result = run_cli("verify", str(sweep), "--width", WIDTH, "--points", "3", "--seeds", "2", "--num-cpus", "2")
    assert result.returncode == 0, result.stderr
    scan = sweep / "verify" / WIDTH
    doc = json.loads((scan / "verify.json").read_text())
    exported = export(sweep, int(WIDTH))["hyperparameters"]

    # centred on the exported lr, equally spaced in log lr, the other axis held at its export
    values = [p["value"] for p in doc["points"]]
    assert values[1] == doc["exported_value"] == exported["lr"] and doc["points"][1]["exported"]
    assert math.isclose(values[1] / values[0], values[2] / values[1], rel_tol=1e-9) and values[0] < values[1]
    assert math.isclose(values[2] / values[1], doc["span"], rel_tol=1e-9)
    trials = Ledger(scan).trials()
    assert len(trials) == 6 and set(trials["width"]) == {int(WIDTH)} and set(trials["seed"]) == {0, 1}
    assert (trials["init_std"] == exported["init_std"]).all()
    assert sorted(set(trials["lr"])) == pytest.approx(values)

    # the verdict follows from the ledger's rows: best mean, pooled seed std, 2*sigma*sqrt(2/n)
    assert (trials["status"] == "completed").all()  # every scanned lr trains at this size
    losses = {v: sorted(trials.loc[trials["lr"] == v, "final_loss"]) for v in set(trials["lr"])}
    means = {v: statistics.fmean(ls) for v, ls in losses.items()}
    sigma = math.sqrt(statistics.fmean([statistics.variance(ls) for ls in losses.values()]))
    best = min(means, key=means.get)
    assert doc["best"]["value"] == pytest.approx(best) and doc["sigma"] == pytest.approx(sigma)
    assert doc["tolerance"] == pytest.approx(2 * sigma * math.sqrt(2 / 2))
    assert doc["difference"] == pytest.approx(means[exported["lr"]] - means[best])
    assert doc["within_noise"] == (doc["difference"] <= doc["tolerance"])
    assert doc["verdict"].startswith("within noise" if doc["within_noise"] else "NOT within noise")
    assert doc["verdict"] in result.stdout
    assert (scan / "verify.png").read_bytes()[:4] == b"\x89PNG" and doc["figure"] == str(scan / "verify.png")

    # running it again records nothing and starts no Ray; the verdict is the same
    before = tree_digest(scan / "trials.parquet")
    again = run_cli("verify", str(sweep), "--width", WIDTH, "--points", "3", "--seeds", "2", "--out",
                    str(sweep / "again.png"))
    assert again.returncode == 0, again.stderr
    assert "6 trials, 0 to run" in again.stderr and tree_digest(scan / "trials.parquet") == before
    assert json.loads((scan / "verify.json").read_text())["verdict"] == doc["verdict"]
    assert (sweep / "again.png").is_file()

    # one seed: the recorded seed-0 trials answer it, and the verdict says it has no noise estimate
    assert main(["verify", str(sweep), "--width", WIDTH, "--points", "3", "--seeds", "1", "--json", "--quiet"]) == 0
    one = json.loads((scan / "verify.json").read_text())
    assert one["within_noise"] is None and one["verdict"].startswith("no noise estimate")
    assert tree_digest(scan / "trials.parquet") == before


@pytest.mark.parametrize("args, field", [
    (["--width", "20"], "width: must be a multiple of head_dim (8)"),
    (["--width", WIDTH, "--axis", "momentum"], "axis: must be one of the sweep's axes (lr, init_std)"),
    (["--width", WIDTH, "--points", "4"], "points: must be an odd whole number"),
    (["--width", WIDTH, "--span", "0.5"], "span: must be a factor > 1"),
    (["--width", WIDTH, "--seeds", "0,0"], "seeds: must be distinct"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(sweep, capsys, args, field):
    before = tree_digest(sweep)
    assert main(["verify", str(sweep), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"telescope: error: {field}") and err.count("\n") == 1
    assert tree_digest(sweep) == before


def test_an_unfinished_sweep_is_refused(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    spec, out = load_spec(spec_path), tmp_path / "out"
    with SweepLock(out):
        open_sweep_dir(out, spec_path.read_text(), spec.fingerprint(), spec.name)
    assert main(["verify", str(out), "--width", "32"]) == 2
    err = capsys.readouterr().err
    assert "is not a finished sweep (0 of 2 levels done" in err and err.count("\n") == 1
    assert not (out / "verify").exists()
