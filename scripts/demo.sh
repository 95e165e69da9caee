#!/usr/bin/env bash
# Quick start, main job: replay the built-in workload through the real control loop
# against the simulated cloud, on SQLite, offline. Extra arguments go to `fleetctl simulate`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
fleetctl simulate --demo "$@"
