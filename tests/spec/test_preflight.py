"""Everything checkable is checked before Ray starts: a corpus no trial could read fails `plan`
and `run` alike, in one line naming the spec field, with nothing written."""

from __future__ import annotations

import pytest

from tests.sweep_helpers import run_cli, write_spec


def _spec_with_data(tmp_path, data: str):
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('data = "builtin:stdlib"', f"data = {data!r}"))
    return spec


@pytest.mark.parametrize("data, field, says", [
    ("/no/such/corpus", "training.data", "no such file or directory: /no/such/corpus"),
    ("{tmp}/empty-dir", "training.data", "holds no files"),
    ("{tmp}/*.nothing", "training.data", "matches no files"),
    ("{tmp}/tiny.txt", "training.seq_len", "too few for one window"),
])
def test_a_corpus_no_trial_could_read_fails_plan_and_run_before_ray(tmp_path, data, field, says):
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "tiny.txt").write_text("a short corpus, too short for a window of seq_len tokens. " * 5)
    spec = _spec_with_data(tmp_path, data.format(tmp=tmp_path))
    out = tmp_path / "out"
    for command in (["plan", str(spec)], ["run", str(spec), "--out", str(out), "--num-cpus", "2"]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"telescope: error: {field}: ") and says in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""  # plan printed no plan for a sweep that cannot run
    assert not out.exists()  # nothing written, and no Ray was started to find out


@pytest.mark.parametrize("resources, training, field, says", [
    ("workers = [1, 1, 3]", "", "training.batch_size", "multiple of the 3 workers"),
    ("workers = 2", "micro_batch_size = 3", "training.micro_batch_size", "use one of 1, 2, 4"),
])
def test_a_batch_the_workers_cannot_share_fails_plan_and_run_before_ray(tmp_path, resources, training, field, says):
    spec = write_spec(tmp_path, calibration_width=64, resources=resources)  # batch_size 8, three levels
    if training:
        spec.write_text(spec.read_text().replace("[training]\n", f"[training]\n{training}\n", 1))
    out = tmp_path / "out"
    for command in (["plan", str(spec)], ["run", str(spec), "--out", str(out), "--num-cpus", "2"]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"telescope: error: {field}: ") and says in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()
