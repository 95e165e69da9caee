"""Judge a replay already in a store, request by request.

    python -m daemon.judge --db sqlite:///simulation.db                 # the built-in workload
    python -m daemon.judge --db sqlite:///sim.db --trace requests.csv --json

The store keeps the fleet and the routing tables but not the requests, so the
same workload the replay ran on is given again (`--trace`, or the config's
demand source, as `fleetctl simulate` chooses it).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daemon.judge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="the replay's database URL")
    ap.add_argument("--trace", help="the request log the replay ran on (default: the config's workload)")
    ap.add_argument("--config", help="the config the replay ran with (default: built-in defaults)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)

    from daemon.config import ConfigError, load_config
    from daemon.demand.errors import TraceError
    from daemon.judge import JudgeInputError, judge
    from daemon.judge.store_adapter import inputs_from_store
    from daemon.simulate import workload_for

    try:
        cfg = load_config(args.config)
        trace = workload_for(cfg, args.trace)
        verdict = judge(inputs_from_store(cfg, args.db, trace))
    except (ConfigError, TraceError, JudgeInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = verdict.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"{s['requests']} requests, {s['served']} served; SLO attainment {s['slo_attainment']:.4f} "
          f"(worst {s['window_s']:g}-s window {s['worst_window_attainment']})")
    print(f"failed: {s['failed']}  retried {s['retried']}, KV recomputes {s['kv_recomputed']}, "
          f"fallback-routed {s['fallback_routed']}")
    print(f"{'pool':24} {'requests':>9} {'attain':>7} {'TTFT p50/p90/p99 s':>24} {'TPOT p50/p90/p99 ms':>24}")
    rows = [("all", s)] + sorted(s["pools"].items())
    for name, b in rows:
        tt, tp = b["ttft_s"], b["tpot_ms"]
        fmt = lambda d: "/".join("-" if d[k] is None else f"{d[k]:.3g}" for k in ("p50", "p90", "p99"))  # noqa: E731
        att = "-" if b["slo_attainment"] is None else f"{b['slo_attainment']:.4f}"
        print(f"{name:24} {b['requests']:>9} {att:>7} {fmt(tt):>24} {fmt(tp):>24}")
    print(f"(judged in {s['judge']['wall_s']} s, {s['judge']['requests_per_s']} requests/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
