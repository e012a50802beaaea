"""device = "auto" is resolved before trial ids are made, recorded in sweep.json, and a directory
never takes trials of another kind of machine. "Another machine" is simulated by what the
directory records (its sweep.json, its rows' device column), never by mocking torch."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil

import pyarrow.parquet as pq
import pytest

from telescope.api import Sweep
from telescope.errors import ConfigError, LedgerError
from telescope.run.devices import check_devices, trial_devices
from telescope.run.progress import Progress
from telescope.spec.sweep import load_spec
from telescope.state import ledger_rows, replay
from telescope.store.files import write_table
from telescope.store.ledger import Ledger
from tests.sweep_helpers import ROOT, tree_digest, write_spec


def tiny_spec(tmp_path, device: str = "auto", name: str = "tiny.toml", resources: str = ""):
    """One level (width 16), a 2x2 grid, 2 seeds, 5 steps: 8 trials of well under a second."""
    path = write_spec(tmp_path, name, calibration_width=16, seeds=2, steps=5, resources=resources)
    text = (path.read_text().replace('device = "cpu"', f'device = "{device}"').replace("min_points = 3", "min_points = 1")
            .replace("points = 3", "points = 2").replace("max_widenings = 1", "max_widenings = 0"))
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def auto_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto-sweep")
    spec = tiny_spec(root)
    Sweep.create(spec, root / "out").run(num_cpus=2, progress=Progress(quiet=True))
    return root, root / "out"


def meta(out):
    return json.loads((out / "sweep.json").read_text())


def copy_of(out, tmp_path, devices):
    """The finished sweep as another machine would have recorded it ("devices" None: as written
    before devices were recorded)."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    recorded = meta(copy)
    if devices is None:
        del recorded["devices"]
    else:
        recorded["devices"] = devices
    (copy / "sweep.json").write_text(json.dumps(recorded, indent=2) + "\n")
    return copy


def ledger_files(out):
    return {k: v for k, v in tree_digest(out).items() if k != ".lock"}


def test_auto_gets_the_ids_an_explicit_cpu_would(auto_sweep):
    root, out = auto_sweep
    assert meta(out)["devices"] == ["cpu"]  # this machine has no GPU, and the trials ask for none
    trials = Ledger(out).trials()
    assert len(trials) == 8 and (trials["device"] == "cpu").all() and (trials["status"] == "completed").all()
    explicit = load_spec(tiny_spec(root, device="cpu", name="explicit.toml"))
    wanted = {t.trial_id for t in replay(explicit, {}).pending.missing}
    assert set(trials["trial_id"]) == wanted
    # the read path replays the recorded devices (without torch: tests/test_layers.py) and finds them all
    assert Sweep.open(out).status()["complete"]


def test_a_point_has_one_id_shared_by_its_seeds(auto_sweep):
    trials = Ledger(auto_sweep[1]).trials()
    by_point = trials.groupby("point_id")
    assert by_point.ngroups == 4 and (by_point["seed"].nunique() == 2).all()
    assert (by_point[["lr", "init_std"]].nunique() == 1).all().all()


def test_resume_refuses_trials_recorded_for_a_gpu_on_a_machine_without_one(auto_sweep, tmp_path):
    copy = copy_of(auto_sweep[1], tmp_path, ["cuda"])  # started on a GPU machine
    before = ledger_files(copy)
    with pytest.raises(ConfigError) as err:
        Sweep.open(copy).resume(num_cpus=2, progress=Progress(quiet=True))
    message = str(err.value)
    assert "\n" not in message and "run on cuda" in message and "new --out" in message
    assert ledger_files(copy) == before  # nothing ran, nothing was written
    # the read path replays the GPU ids, of which this directory holds none
    assert not Sweep.open(copy).status()["complete"]


def test_a_directory_from_before_devices_were_recorded_refuses_another_kind(auto_sweep, tmp_path):
    copy = copy_of(auto_sweep[1], tmp_path, None)
    (part,) = (copy / "trials.parquet").glob("part-*.parquet")
    table = pq.read_table(part)
    gpu = table.set_column(table.schema.get_field_index("device"), "device",
                           [["cuda:0 (NVIDIA H100)"] * table.num_rows])
    write_table(gpu.replace_schema_metadata(table.schema.metadata), part)  # its rows ran on a GPU
    before = ledger_files(copy)
    with pytest.raises(ConfigError) as err:
        Sweep.open(copy).resume(num_cpus=2, progress=Progress(quiet=True))
    assert "ran on cuda" in str(err.value) and "\n" not in str(err.value)
    assert ledger_files(copy) == before


def test_trials_recorded_for_the_cpu_stay_there_on_a_machine_that_would_pick_cuda(tmp_path):
    # trials that ask Ray for a GPU resolve "auto" to cuda on any machine: this one stands in for a GPU machine
    spec = load_spec(tiny_spec(tmp_path, resources="num_gpus = 1"))
    assert trial_devices(spec, address=None) == ("cuda",)
    assert trial_devices(load_spec(tiny_spec(tmp_path, name="cpu.toml")), address="ray://head:10001") == ("cpu",)
    notes = io.StringIO()
    check_devices(spec.on_devices(["cpu"]), tmp_path, {}, 0, None, Progress(stream=notes))
    assert "run on cpu (fp32) as recorded" in notes.getvalue()
    # an explicit device is what every trial runs on, here as anywhere: nothing to resolve or check
    explicit = load_spec(tiny_spec(tmp_path, device="cpu", name="explicit.toml"))
    assert trial_devices(explicit, address=None) == ("cpu",)
    assert replay(explicit.on_devices(["cpu"]), {}).pending.missing == replay(explicit, {}).pending.missing


def test_rows_are_found_under_the_recorded_devices_only(auto_sweep):
    spec = Sweep.open(auto_sweep[1]).spec
    assert spec.devices == ("cpu",)
    rows = ledger_rows(Ledger(auto_sweep[1]))
    assert replay(spec, rows).complete
    assert not replay(spec.on_devices(["cuda"]), rows).complete  # another kind's trials are other trials


@pytest.mark.parametrize("spec_file, n, digest", [
    # the demo ledger recorded before ns_dtype existed holds these: its Newton-Schulz ran in bf16
    ("demo.toml", 25, "0b54eefd993966c6"),
    ("paper.toml", 64, "b43966d3b0e3f169"),
])
def test_ids_of_explicit_device_specs_are_the_ones_recorded_before_devices_were_resolved(spec_file, n, digest):
    spec = load_spec(ROOT / "sweeps" / spec_file)
    if spec.fixed.resolved_ns_dtype != "bf16":  # today's demo: fp32 on its CPU, so other trials, other ids
        assert hashlib.sha256(",".join(sorted(t.trial_id for t in replay(spec, {}).pending.missing)).encode()
                              ).hexdigest()[:16] != digest
        spec = dataclasses.replace(spec, fixed=spec.fixed.replace(ns_dtype="bf16"))
    ids = sorted(t.trial_id for t in replay(spec, {}).pending.missing)
    assert len(ids) == n and hashlib.sha256(",".join(ids).encode()).hexdigest()[:16] == digest
    assert ids == sorted(t.trial_id for t in replay(spec.on_devices([spec.fixed.device] * spec.n_levels), {})
                         .pending.missing)


@pytest.mark.parametrize("devices", [["tpu"], ["cpu", "cpu"], "cpu", []])
def test_a_damaged_devices_record_is_the_directorys_fault_in_one_line(auto_sweep, tmp_path, devices):
    copy = copy_of(auto_sweep[1], tmp_path, devices)
    with pytest.raises(LedgerError) as err:
        Sweep.open(copy).status()
    assert err.value.path == str(copy / "sweep.json") and "\n" not in str(err.value)
