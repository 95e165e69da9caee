#!/usr/bin/env bash
# Quick start, tests: installs what the tests need, then runs them. Extra arguments go to pytest.
#
# As root (CI, a fresh machine) it also installs and starts the services the
# integration tests use: Prometheus (scripts/deps-prometheus.sh) and a local
# Slurm cluster that SkyPilot launches on (scripts/slurm-cluster.sh), stopped
# again at exit. Elsewhere those tests skip and say why. FLEET_SLURM_TESTS=0
# skips the Slurm cluster.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
if [ "$(id -u)" = 0 ]; then
  for deps in "$ROOT"/scripts/deps-*.sh; do
    [ -f "$deps" ] && bash "$deps"
  done
  if [ "${FLEET_SLURM_TESTS:-1}" != 0 ]; then
    echo "starting the local Slurm cluster for the SkyPilot end-to-end tests ..." >&2
    if FLEET_PYTHON="$ROOT/.venv/bin/python" bash "$ROOT/scripts/slurm-cluster.sh" start >&2; then
      export FLEET_SLURM_TESTS=1
      trap 'FLEET_PYTHON="$ROOT/.venv/bin/python" bash "$ROOT/scripts/slurm-cluster.sh" stop >&2 || true' EXIT
    else
      echo "warning: the Slurm cluster did not start; its tests will skip" >&2
      export FLEET_SLURM_TESTS=0
    fi
  fi
fi
python -m pytest "$@"
