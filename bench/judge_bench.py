"""Speed of the request-level judge (daemon/judge): requests judged per second, wall time.

    python bench/judge_bench.py                    # (a) Azure conv 1 h, (b) the built-in 3-day workload
    python bench/judge_bench.py --only conv
    python bench/judge_bench.py --db-dir /tmp/jb   # keep the replays' databases; reruns reuse them

Each workload is first replayed through this project's loop (`daemon.simulate.simulate`,
the default config, the simulated cloud) to get a realistic fleet timeline: replicas
booting, scaled down through a drain, preempted; routing tables changing with the
plans. The replay is timed apart; the figure that matters is the judge's own wall time
on one core (`judge()` plus `Verdict.summary()`), over every request of the trace.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
CONV = DATA / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv.xz"


def _quiet() -> None:
    from daemon.logging import configure_logging

    configure_logging("error", json=True)  # the replay's per-tick lines would drown the figures


def replay(name: str, trace, db_dir: Path):
    """(db url, replay seconds or None when reused) for a replay of `trace` with the default config."""
    from daemon.config import default_config
    from daemon.simulate import simulate

    db = db_dir / f"{name}.db"
    done = db_dir / f"{name}.done"  # written after a replay completes: an interrupted one is redone
    url = f"sqlite:///{db}"
    if db.exists() and done.exists():
        return url, None
    for leftover in db_dir.glob(f"{name}.db*"):
        leftover.unlink()
    t0 = time.perf_counter()
    simulate(default_config(), trace, url)
    done.write_text("ok\n")
    return url, time.perf_counter() - t0


def bench(name: str, trace, db_dir: Path) -> dict:
    from daemon.config import default_config
    from daemon.judge import judge
    from daemon.judge.store_adapter import inputs_from_store

    url, replay_s = replay(name, trace, db_dir)
    cfg = default_config()
    t0 = time.perf_counter()
    inputs = inputs_from_store(cfg, url, trace)
    t1 = time.perf_counter()
    verdict = judge(inputs)
    t2 = time.perf_counter()
    s = verdict.summary()
    t3 = time.perf_counter()
    n = len(inputs.requests)
    return {
        "workload": name, "requests": n, "replicas": len(inputs.fleet), "routing_tables": len(inputs.routing),
        "preempted_replicas": sum(r.preempted for r in inputs.fleet),
        "replay_s": None if replay_s is None else round(replay_s, 1),
        "load_inputs_s": round(t1 - t0, 3), "judge_s": round(t2 - t1, 3), "summary_s": round(t3 - t2, 3),
        "requests_per_s": round(n / (t3 - t1)), "iterations": verdict.iterations,
        "slo_attainment": s["slo_attainment"], "failed": s["failed"], "p99_ttft_s": s["ttft_s"]["p99"],
        "p99_tpot_ms": s["tpot_ms"]["p99"], "kv_preemptions": verdict.kv_preemptions,
        "retried": s["retried"], "fallback_routed": s["fallback_routed"],
    }


def sampled(name: str, trace, db_dir: Path, strides: list[int], window_s: float, warmup_s: float) -> list[dict]:
    """The window-sampled judge against the request-level one on the same inputs."""
    from daemon.config import default_config
    from daemon.judge import judge
    from daemon.judge.sampled import judge_sampled
    from daemon.judge.store_adapter import inputs_from_store

    url, _ = replay(name, trace, db_dir)
    inputs = inputs_from_store(default_config(), url, trace)
    full = judge(inputs)
    fs = full.summary()
    rows = [{"workload": name, "stride": 1, "judge_s": round(full.wall_s, 2), "slo_attainment": fs["slo_attainment"],
             "stderr": 0.0, "p99_ttft_s": fs["ttft_s"]["p99"], "p99_tpot_ms": fs["tpot_ms"]["p99"]}]
    for stride in strides:
        for seed in range(min(3, stride)):  # three different sets of windows
            sv = judge_sampled(inputs, stride, window_s, warmup_s, offset=seed)
            ss = sv.summary()
            rows.append({"workload": name, "stride": stride, "offset": seed, "judge_s": ss["judge"]["wall_s"],
                         "slo_attainment": ss["slo_attainment"], "stderr": ss["slo_attainment_stderr"],
                         "p99_ttft_s": ss["ttft_s"]["p99"], "p99_tpot_ms": ss["tpot_ms"]["p99"],
                         "err_attainment": round(ss["slo_attainment"] - fs["slo_attainment"], 6),
                         "err_p99_ttft": round(ss["ttft_s"]["p99"] / fs["ttft_s"]["p99"] - 1, 4),
                         "err_p99_tpot": round(ss["tpot_ms"]["p99"] / fs["tpot_ms"]["p99"] - 1, 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["conv", "demo"], help="one workload only")
    ap.add_argument("--db-dir", help="where the replays' databases live (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="one JSON object per workload")
    ap.add_argument("--sampled", nargs="*", type=int, metavar="STRIDE",
                    help="also compare the window-sampled judge (every STRIDE-th window; default 4 8) with the full one")
    ap.add_argument("--window-s", type=float, default=3600.0, help="sampled judge: window length (default 1 h)")
    ap.add_argument("--warmup-s", type=float, default=600.0, help="sampled judge: warm-up before a window")
    args = ap.parse_args()
    _quiet()
    from daemon.demand.demo import demo_trace
    from daemon.demand.request_log import read_trace

    tmp = None
    if args.db_dir:
        db_dir = Path(args.db_dir)
        db_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        db_dir = Path(tmp.name)
    rows = []
    if args.only in (None, "conv"):
        if CONV.exists():
            rows.append(bench("azure-conv-1h", read_trace(CONV), db_dir))
        else:
            print(f"(no Azure conv trace at {CONV}; skipped)")
    if args.only in (None, "demo"):
        print("replaying the built-in 3-day workload through the loop first (a few minutes) ...", file=sys.stderr)
        rows.append(bench("demo-3d", demo_trace(), db_dir))
    for r in rows:
        if args.json:
            print(json.dumps(r))
            continue
        print(f"{r['workload']}: {r['requests']} requests, {r['replicas']} replicas ({r['preempted_replicas']} preempted), "
              f"{r['routing_tables']} routing tables")
        print(f"  judge {r['judge_s']:.2f} s + summary {r['summary_s']:.2f} s = {r['requests_per_s']:,} requests/s "
              f"on one core ({r['iterations']:,} engine iterations); inputs from the store {r['load_inputs_s']:.2f} s; "
              f"replay {r['replay_s'] if r['replay_s'] is not None else 'reused'} s")
        print(f"  attainment {r['slo_attainment']:.4f}, p99 TTFT {r['p99_ttft_s']} s, p99 TPOT {r['p99_tpot_ms']} ms, "
              f"failed {r['failed']}, retried {r['retried']}, KV recomputes {r['kv_preemptions']}, "
              f"fallback-routed {r['fallback_routed']}")
    if args.sampled is not None:
        strides = args.sampled or [4, 8]
        print(f"\nwindow-sampled judge vs request-level ({args.window_s:g} s windows, {args.warmup_s:g} s warm-up, "
              f"3 offsets per stride):")
        work = [("demo-3d", demo_trace())] if args.only != "conv" else [("azure-conv-1h", read_trace(CONV))]
        for name, tr in work:
            for r in sampled(name, tr, db_dir, strides, args.window_s, args.warmup_s):
                if args.json:
                    print(json.dumps(r))
                elif r["stride"] == 1:
                    print(f"  {name} full: attainment {r['slo_attainment']:.4f}, p99 TTFT {r['p99_ttft_s']} s, "
                          f"p99 TPOT {r['p99_tpot_ms']} ms ({r['judge_s']} s)")
                else:
                    print(f"  stride {r['stride']} offset {r['offset']}: attainment {r['slo_attainment']:.4f} "
                          f"+- {r['stderr']:.4f} (error {r['err_attainment']:+.4f}), p99 TTFT error "
                          f"{r['err_p99_ttft'] * 100:+.1f}%, p99 TPOT error {r['err_p99_tpot'] * 100:+.1f}% "
                          f"({r['judge_s']} s)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
