#!/usr/bin/env bash
# Quick start, tests: installs what the tests need, then runs them. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
for deps in "$ROOT"/scripts/deps-*.sh; do
  [ -f "$deps" ] && bash "$deps"
done
python -m pytest "$@"
