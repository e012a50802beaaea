"""A user's trainable on a real multi-node Ray cluster (on this machine): with --address, the code
reaches the workers through Ray's runtime environment (working_dir shipped), not from the
driver's directory. Select with `-m cluster`."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from telescope.run import local_cluster as lc
from tests.sweep_helpers import ROOT, telescope_cmd
from tests.trainable_helpers import trainable_spec

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="multi-node Ray: Linux only"),
]

TRAIN = """\
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def train(ctx):
    ctx.report(1, train_loss=3.0)
    loss = 2.0 + (ctx.params["lr"] - 0.01) ** 2 + (ctx.params["init_std"] - 0.02) ** 2
    return {{"final_loss": loss, "from_copy": float(not HERE.startswith({code!r}))}}
"""


def test_a_cluster_runs_the_users_code_from_the_copy_ray_ships(tmp_path):
    code = tmp_path / "code"
    (code / "mycode").mkdir(parents=True)
    (code / "mycode" / "__init__.py").write_text("")
    (code / "mycode" / "train.py").write_text(TRAIN.format(code=str(code)))
    spec = trainable_spec(tmp_path, f'[trainable]\nfunction = "mycode.train:train"\nworking_dir = {str(code)!r}\n'
                                    'metrics = ["from_copy"]\n', calibration_width=16)
    out = tmp_path / "out"
    with lc.LocalCluster(workers=1, cpus_per_node=1, head_cpus=1) as cluster:
        result = subprocess.run(telescope_cmd("run", str(spec), "--out", str(out), "--address", cluster.address,
                                              "--quiet"), env=cluster.driver_env(), capture_output=True, text=True,
                                cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 9 and (trials["status"] == "completed").all()
    assert (trials["from_copy"] == 1.0).all()  # imported from Ray's copy of working_dir, wherever it ran
