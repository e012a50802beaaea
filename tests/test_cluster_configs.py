"""The cluster configs in cluster/: the `ray up` config against the schema Ray ships, the KubeRay
manifests against what KubeRay needs, and the security rules (token auth on, nothing on all
interfaces unless a manifest says so explicitly and guards it)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


# ------------------------------------------------------------------ ray up (AWS)


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())


def test_aws_config_validates_against_rays_shipped_schema(aws):
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(aws, schema)
    # And as `ray up` sees it: merged with the AWS defaults, then Ray's own extra checks.
    validate_config(prepare_config(copy.deepcopy(aws)))


def test_aws_schema_check_can_fail(aws):
    bad = copy.deepcopy(aws)
    bad["available_node_types"]["head"]["node_config_typo"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text()))


def test_aws_node_types(aws):
    types = aws["available_node_types"]
    assert aws["head_node_type"] in types
    gpu_types = {k: v for k, v in types.items() if k != aws["head_node_type"]}
    assert gpu_types, "no worker node types"
    instance = {k: v["node_config"]["InstanceType"] for k, v in types.items()}
    assert not re.match(r"^(g\d|p\d)", instance[aws["head_node_type"]]), "the head needs no GPU"
    assert all(re.match(r"^(g\d|p\d)", t) for k, t in instance.items() if k in gpu_types)
    assert sum(v.get("max_workers", 0) for v in gpu_types.values()) <= aws["max_workers"]
    assert all(v.get("min_workers", 0) == 0 for v in gpu_types.values())  # GPUs only on demand


def test_aws_installs_this_project_and_keeps_auth_on(aws):
    assert aws["file_mounts"]["~/telescope"] == "."
    assert aws["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(aws["setup_commands"])
    assert "uv venv" in setup and re.search(r"uv pip install .*-e \.", setup)
    assert f"ray[default,tune]=={ray.__version__}" in setup  # the cluster's Ray = this one
    head = " ".join(aws["head_start_ray_commands"])
    worker = " ".join(aws["worker_start_ray_commands"])
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd
        assert "cd ~/telescope" in cmd  # trials resolve relative spec paths in the repo
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert "provider" in aws and "security_group" not in aws["provider"]  # no extra open ports


# ------------------------------------------------------------------ KubeRay


def _check_cluster_spec(spec: dict, where: str) -> dict:
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion != installed Ray"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth must be on"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("num-gpus") == "0"
    head_c = head["template"]["spec"]["containers"][0]
    assert head_c["image"].startswith(f"rayproject/ray:{ray.__version__}-py311-gpu")
    assert "nvidia.com/gpu" not in head_c.get("resources", {}).get("limits", {})
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "template"):
            assert key in g, f"{where}: worker group lacks {key}"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert c["image"] == head_c["image"]
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert gpus >= 1 and c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert g["rayStartParams"]["num-gpus"] == str(gpus)
        assert any(t.get("key") == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))
    # With the overwrite annotation, our command must still end in KubeRay's `ray start`.
    for c in [head_c] + [g["template"]["spec"]["containers"][0] for g in groups]:
        script = " ".join(c["args"])
        assert "$KUBERAY_GEN_RAY_START_CMD" in script and "cd /home/ray/telescope" in script
        assert "uv pip install" in script
    return head_c


def _mounted_claims(pod_spec: dict, container: dict) -> dict[str, str]:
    """mountPath -> PVC name for a container."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod_spec.get("volumes", []) if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in claims}


def test_raycluster_manifest():
    rc = _one(KUBERAY / "raycluster.yaml", "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["metadata"]["name"]
    assert rc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    head_c = _check_cluster_spec(rc["spec"], "raycluster.yaml")
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    head_pod = rc["spec"]["headGroupSpec"]["template"]["spec"]
    assert _mounted_claims(head_pod, head_c) == {"/mnt/ledger": "telescope-ledger"}


def test_rayjob_manifest_runs_a_sweep_of_this_repo_into_the_ledger_volume():
    job = _one(KUBERAY / "rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    assert job["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    spec = job["spec"]
    entry = spec["entrypoint"]
    m = re.search(r"telescope run (sweeps/\S+\.toml) --out (\S+)", entry)
    assert m, entry
    assert (ROOT / m.group(1)).is_file(), f"{m.group(1)} is not in this repository"
    assert m.group(1) == "sweeps/paper.toml"
    assert "--address auto" in entry  # join the job's cluster, not a private local Ray
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1  # a retry continues from the ledger
    cluster = spec["rayClusterSpec"]
    head_c = _check_cluster_spec(cluster, "rayjob.yaml")
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    mounts = _mounted_claims(head_pod, head_c)
    out = m.group(2)
    ledger_mounts = [p for p in mounts if out.startswith(p.rstrip("/") + "/")]
    assert ledger_mounts, f"--out {out} is not on a mounted volume ({mounts})"
    pvc = _one(KUBERAY / "ledger-pvc.yaml", "PersistentVolumeClaim")
    assert mounts[ledger_mounts[0]] == pvc["metadata"]["name"]
    # Workers read the training data from the data volume.
    data_pvc = _one(KUBERAY / "data-pvc.yaml", "PersistentVolumeClaim")
    for g in cluster["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        assert _mounted_claims(pod, pod["containers"][0]) == {"/mnt/data": data_pvc["metadata"]["name"]}


def test_dashboard_on_all_interfaces_only_where_explicit_and_guarded():
    policy = _one(KUBERAY / "networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for name, kind, path in (("raycluster.yaml", "RayCluster", ("spec",)),
                             ("rayjob.yaml", "RayJob", ("spec", "rayClusterSpec"))):
        spec = _one(KUBERAY / name, kind)
        for key in path:
            spec = spec[key]
        host = spec["headGroupSpec"]["rayStartParams"].get("dashboard-host")
        assert host is not None, f"{name}: set dashboard-host explicitly (KubeRay defaults to 0.0.0.0)"
        if host != "127.0.0.1":
            assert host == "0.0.0.0" and spec["authOptions"]["mode"] == "token", name


def test_pvcs():
    for name, mode in (("ledger-pvc.yaml", "ReadWriteOnce"), ("data-pvc.yaml", "ReadOnlyMany")):
        pvc = _one(KUBERAY / name, "PersistentVolumeClaim")
        assert pvc["apiVersion"] == "v1"
        assert mode in pvc["spec"]["accessModes"]
        assert pvc["spec"]["resources"]["requests"]["storage"]


# ------------------------------------------------------------------ every file in cluster/

AUTH_OFF = re.compile(
    r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled|mode:\s*[\"']?disabled|AUTH_MODE[\"']?\s*[:=,]\s*[\"']?disabled",
    re.IGNORECASE,
)


def test_no_file_turns_token_auth_off():
    files = _cluster_files()
    assert len(files) >= 8
    for p in files:
        text = p.read_text(errors="replace")
        assert not AUTH_OFF.search(text), f"{p.relative_to(ROOT)} turns token auth off"
    assert AUTH_OFF.search("RAY_AUTH_MODE=disabled ray start --head")  # the check can fire


def test_nothing_binds_all_interfaces_except_the_guarded_rayjob_dashboard():
    allowed = {("kuberay/rayjob.yaml", 'dashboard-host: "0.0.0.0"')}
    for p in _cluster_files():
        rel = p.relative_to(CLUSTER).as_posix()
        for line in p.read_text(errors="replace").splitlines():
            if re.search(r"0\.0\.0\.0|\[::\]|dashboard-host[= ]::", line):
                assert (rel, line.strip()) in allowed or rel == "README.md", f"{rel}: {line.strip()}"


def test_local_cluster_script_stays_on_loopback():
    src = (ROOT / "telescope" / "run" / "local_cluster.py").read_text()
    assert 'LOOPBACK = "127.0.0.1"' in src
    assert "--node-ip-address={LOOPBACK}" in src
    # It signals its own process groups; `ray stop` would stop every Ray on the machine.
    assert not re.search(r"""["']stop["']\s*,?\s*\]|\bray stop\b.*subprocess""", src)
    assert "RAY_AUTH_MODE=\"token\"" in src


def test_shell_wrapper_runs_the_python_cli():
    sh = CLUSTER / "local-cluster.sh"
    assert os.access(sh, os.X_OK)
    out = subprocess.run([str(sh), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    for cmd in ("start", "status", "kill-worker", "stop"):
        assert cmd in out.stdout
