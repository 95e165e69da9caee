#!/usr/bin/env bash
# Quick start, main job: what this policy costs against what a platform team would run instead.
#
# Replays 12 hours of the built-in workload through the real control loop against the
# simulated cloud, once per policy on identical inputs (same trace, cloud seed, spot
# schedule, prices, launch latencies), judges every request, and prints the comparison:
# cost, ratio to each baseline and to the oracle (a lower bound), request-level SLO
# attainment, p99 TTFT and TPOT. The `ours` replay is kept in simulation.db.
#
# What the demo leaves out to finish in under a minute (the benchmark does it all:
# python bench/compare_bench.py): the 3-day workload (12 hours here), and the policy
# ours_no_forecast, which below two days of history decides exactly as ours does (the
# fitted forecast needs forecast.min_history_days = 2). Replays run in parallel processes,
# one per core (at most 4). Extra arguments go to `fleetctl simulate`, e.g. --demo-days 3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
jobs=$(python -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')
rm -f simulation.db simulation.db-wal simulation.db-shm
start=$(date +%s)
fleetctl simulate --demo --demo-days 0.5 --compare static,reactive,spothedge,melange,ours,oracle \
  --jobs "$jobs" --db sqlite:///simulation.db "$@"
echo "demo: $(( $(date +%s) - start )) s wall; next: fleetctl status --db sqlite:///simulation.db | fleetctl audit --db sqlite:///simulation.db"
