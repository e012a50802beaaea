#!/usr/bin/env bash
# Thin wrapper around `python -m telescope.run.local_cluster` with the project's Python (.venv, else python3).
#   cluster/local-cluster.sh start --workers 2 --cpus-per-node 1 --gpus-per-node 1
#   source /tmp/telescope-cluster/env.sh
#   cluster/local-cluster.sh status | kill-worker 0 | stop
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m telescope.run.local_cluster "$@"
