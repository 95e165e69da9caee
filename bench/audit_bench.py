"""`fleetctl audit` (and status, events) over a year of one-minute ticks, on SQLite and PostgreSQL.

Builds a store with the real schema (Alembic) holding 525,600 decisions (one per
minute for 365 days, with decision blobs the size the real tick writes: about
1.8 kB of inputs, forecast, plan and actions) and the lifecycle of a 20-instance
fleet: 12 instances always on, 8 more from 08:00 to 22:00 UTC every day, 60% on
spot with zone-wide preemptions (0.005 per zone-hour) that are replaced a minute
later. Prices are the bundled catalog's (providers/data/offerings.csv). Then it
times the operator's commands as a user runs them (a fresh process each time,
best and median of --runs) and in-process.

    python bench/audit_bench.py                        # SQLite in bench/out/, PostgreSQL too when root
    python bench/audit_bench.py --backend sqlite --runs 5
    python bench/audit_bench.py --pg-url postgresql+psycopg://user:pw@127.0.0.1:5432/db

Target (issue 12): audit under 2 s on both backends. The database is kept (and reused when its
counts match) under bench/out/; delete it to rebuild.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
MINUTES = 365 * 24 * 60  # 525,600 ticks
ZONE_HAZARD_PER_HOUR = 0.005


def _sqlite_ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _blobs(k: int, rng: random.Random) -> tuple[str, str, str, str]:
    """Decision blobs shaped and sized like the tick's (daemon/loop/tick.py plan_dict, inputs)."""
    rate = round(4.0 + 3.0 * rng.random(), 4)
    forecast = {"chat": {"service": "chat", "rate_rps": rate, "horizon_s": 360.0, "method": "mstl_arima",
                         "quantile": 0.9, "mix": [[round(rng.random() / 4, 4) for _ in range(4)] for _ in range(4)],
                         "details": {"lookahead_rate_rps": rate, "recent_peak_rps": rate * 0.9, "fit_seconds": 0.8}}}
    plan = {"status": "reused" if k % 15 else "optimal", "solver": "ilp-cbc", "cost_per_hour": 12.5,
            "solve_seconds": 0.0 if k % 15 else 0.35, "gap": 0.0,
            "targets": [{"service": "chat", "offering": o, "count": n} for o, n in (
                ("aws/us-east-1/us-east-1a/g5.xlarge/spot", 4), ("aws/us-east-1/us-east-1d/g5.xlarge/on-demand", 4),
                ("gcp/us-east4/us-east4-a/g2-standard-8/spot", 4))],
            "routes": [{"service": "chat", "input_bucket": i, "output_bucket": None, "pool": p, "weight": w}
                       for i in range(4) for p, w in (("A10Gx1", 0.62), ("L4x1", 0.38))],
            "objective": 13.1, "utilization": {"chat/A10Gx1": 0.71, "chat/L4x1": 0.66},
            "binding": [], "unserved_rps": {}, "notes": ["demand within the replan band"] if k % 15 else []}
    inputs = {"new_windows": 1, "unavailable": [], "prices_read_at": None, "offerings": 72,
              "fleet": {"running": 20}, "synced": {"transitions": {}, "orphans": []}, "mode": "apply",
              "skipped_for_budget": 0, "skipped_for_limits": 0, "held_for_make_before_break": 0}
    return json.dumps(inputs), json.dumps(forecast), json.dumps(plan), "[]"


def _fleet(rng: random.Random):
    """Instances and their events over the year: (instances rows, events rows)."""
    from providers.simulated import load_offerings

    offs = {o.key: o for o in load_offerings(None)}
    pick = [k for k in offs if k.endswith("/spot") and offs[k].gpu in ("A10G", "L4")]
    on_demand = [k for k in offs if k.endswith("/on-demand") and offs[k].gpu == "A10G"]
    instances, events = [], []
    n = 0

    def launch(slot_market: str, at: datetime, reason: str, avoid: str | None = None) -> dict:
        nonlocal n
        n += 1
        if slot_market == "spot":
            key = rng.choice([k for k in pick if offs[k].location != avoid] or pick)
        else:
            key = rng.choice(on_demand)
        o = offs[key]
        iid = f"chat-{n:06d}"
        ready = at + timedelta(seconds=rng.uniform(120, 300))
        row = {"id": iid, "name": f"fleet-{iid}", "service": "chat", "provider": "simulated", "cloud": o.cloud,
               "region": o.region, "zone": o.zone, "instance_type": o.instance_type, "gpu": o.gpu,
               "gpu_count": o.gpu_count, "market": str(o.market), "offering_key": key, "price_per_hour": o.price_per_hour,
               "state": "running", "requested_at": at, "launched_at": at, "ready_at": ready, "ended_at": None,
               "last_reason": "became_ready", "location": o.location}
        did = int((at - START).total_seconds() // 60) + 1
        events.extend([(iid, at, None, "requested", reason, did), (iid, at, "requested", "provisioning",
                                                                     "launch_accepted", did),
                       (iid, ready, "provisioning", "running", "became_ready", None)])
        instances.append(row)
        return row

    def end(row: dict, at: datetime, how: str) -> None:
        did = int((at - START).total_seconds() // 60) + 1
        if how == "preempted":
            events.append((row["id"], at, "running", "preempted", "preempted", None))
            row.update(state="preempted", ended_at=at, last_reason="preempted")
        else:
            events.extend([(row["id"], at, "running", "draining", "scale_down", did),
                           (row["id"], at + timedelta(minutes=2), "draining", "terminating", "drain_complete", did + 2),
                           (row["id"], at + timedelta(minutes=3), "terminating", "terminated", "terminate_confirmed", None)])
            row.update(state="terminated", ended_at=at + timedelta(minutes=3), last_reason="terminate_confirmed")

    slots = [("on-demand" if s < 5 else "spot", s >= 12) for s in range(20)]  # (market, diurnal)
    live: dict[int, dict | None] = {s: (launch(m, START, "launch_requested") if not d else None)
                                    for s, (m, d) in enumerate(slots)}
    end_time = START + timedelta(minutes=MINUTES)
    t = START
    step = timedelta(minutes=1)
    hazard = ZONE_HAZARD_PER_HOUR / 60.0
    while t < end_time:
        if t.minute == 0 and t.hour in (8, 22):
            for s, (m, diurnal) in enumerate(slots):
                if not diurnal:
                    continue
                if t.hour == 8 and live[s] is None:
                    live[s] = launch(m, t, "launch_requested")
                elif t.hour == 22 and live[s] is not None:
                    end(live[s], t, "scale_down")
                    live[s] = None
        zones = {r["location"] for r in live.values() if r is not None and r["market"] == "spot"}
        for z in sorted(zones):
            if rng.random() < hazard:  # a zone-wide spot loss: every spot instance there, replaced a minute later
                for s, r in live.items():
                    if r is not None and r["location"] == z and r["state"] == "running":
                        at = t + timedelta(seconds=rng.uniform(0, 59))
                        end(r, at, "preempted")
                        live[s] = launch("spot", t + step, "replaced", avoid=z)
        t += step
    return instances, events


def build(url: str, rng_seed: int = 12) -> dict:
    from daemon.store.migrate import upgrade
    from daemon.store.repo import Store

    t0 = time.perf_counter()
    store = Store.open(url, durable=False)
    upgrade(store.engine)
    rng = random.Random(rng_seed)
    instances, events = _fleet(rng)
    dialect = store.engine.dialect.name
    raw = store.engine.raw_connection()
    cur = raw.cursor()
    blob_cache = [_blobs(k, random.Random(k)) for k in range(60)]
    cols_i = ("id", "name", "service", "provider", "cloud", "region", "zone", "instance_type", "gpu", "gpu_count",
              "market", "offering_key", "price_per_hour", "state", "requested_at", "launched_at", "ready_at",
              "ended_at", "last_reason")

    def dt(v):
        if v is None:
            return None
        return _sqlite_ts(v) if dialect == "sqlite" else v.astimezone(timezone.utc).replace(tzinfo=None)

    dec_rows = ((k + 1, dt(START + timedelta(minutes=k)), "applied", "reused" if k % 15 else "optimal", "ilp-cbc",
                 0.0 if k % 15 else 0.35, 12.5, 12.4, 5.0, 4.8, 0, 0, None, *blob_cache[k % 60]) for k in range(MINUTES))
    dec_sql_cols = ("id, at, outcome, plan_status, solver, solve_seconds, planned_cost_per_hour, fleet_cost_per_hour, "
                    "forecast_rps, observed_rps, launches, terminations, error, inputs, forecast, plan, actions")
    if dialect == "sqlite":
        cur.executemany(f"INSERT INTO decisions ({dec_sql_cols}) VALUES ({', '.join('?' * 17)})", dec_rows)
        cur.executemany(f"INSERT INTO instances ({', '.join(cols_i)}) VALUES ({', '.join('?' * len(cols_i))})",
                        [tuple(dt(r[c]) if c.endswith("_at") else r[c] for c in cols_i) for r in instances])
        cur.executemany("INSERT INTO instance_events (instance_id, at, from_state, to_state, reason, decision_id) "
                        "VALUES (?, ?, ?, ?, ?, ?)", [(i, dt(a), f, t, r, d) for i, a, f, t, r, d in events])
        raw.commit()
    else:
        with cur.copy(f"COPY decisions ({dec_sql_cols}) FROM STDIN") as cp:
            for row in dec_rows:
                cp.write_row(row)
        with cur.copy(f"COPY instances ({', '.join(cols_i)}) FROM STDIN") as cp:
            for r in instances:
                cp.write_row(tuple(dt(r[c]) if c.endswith("_at") else r[c] for c in cols_i))
        with cur.copy("COPY instance_events (instance_id, at, from_state, to_state, reason, decision_id) FROM STDIN") as cp:
            for i, a, f, t, r, d in events:
                cp.write_row((i, dt(a), f, t, r, d))
        cur.execute("SELECT setval(pg_get_serial_sequence('decisions', 'id'), (SELECT max(id) FROM decisions))")
        raw.commit()
        raw.driver_connection.autocommit = True
        cur = raw.driver_connection.cursor()
        cur.execute("VACUUM ANALYZE")  # what autovacuum does on a store that has been running for a while
    raw.close()
    return {"instances": len(instances), "events": len(events), "decisions": MINUTES,
            "build_seconds": round(time.perf_counter() - t0, 1)}


def counts(url: str) -> tuple[int, int, int] | None:
    from daemon.store.fastread import StoreUnavailable, open_reader

    try:
        with open_reader(url) as r:
            if not r.has_table("decisions"):
                return None
            return tuple(r.one(f"SELECT count(*) FROM {t}")[0] for t in ("decisions", "instances", "instance_events"))
    except StoreUnavailable:
        return None


def time_cli(args: list[str], runs: int) -> dict:
    exe = str(Path(sys.executable).parent / "fleetctl")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"fleetctl {' '.join(args[:1])} failed: {r.stderr[-2000:]}")
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3), "runs": runs}


def bench(url: str, label: str, runs: int) -> dict:
    from daemon.audit import audit
    from daemon.redact import mask_url
    from daemon.store.fastread import open_reader

    c = counts(url)
    built = None
    if c is None or c[0] != MINUTES:
        print(f"[{label}] building a year of one-minute ticks in {mask_url(url)} ...", file=sys.stderr, flush=True)
        built = build(url)
        c = counts(url)
    out = {"backend": label, "decisions": c[0], "instances": c[1], "events": c[2], "built": built}
    with open_reader(url) as r:
        for by in (("service", "gpu", "market"), ("service", "cloud", "region", "zone", "gpu", "market", "reason")):
            t0 = time.perf_counter()
            rep = audit(r, by=by)
            out[f"audit_in_process_s[{','.join(by)}]"] = round(time.perf_counter() - t0, 3)
        out["audit_cost_usd"] = rep["total_cost_usd"]
        out["audit_savings_pct"] = rep["totals"]["savings_pct"]
        out["audit_preemptions"] = rep["totals"]["preemptions"]
    out["cli_audit"] = time_cli(["audit", "--db", url], runs)
    out["cli_audit_by_all"] = time_cli(["audit", "--db", url, "--by", "service,cloud,region,zone,gpu,market,reason",
                                        "--format", "json"], runs)
    out["cli_audit_one_month"] = time_cli(["audit", "--db", url, "--since", "2025-06-01", "--until", "2025-07-01"], runs)
    out["cli_status"] = time_cli(["status", "--db", url], runs)
    out["cli_events_preempted"] = time_cli(["events", "--db", url, "--reason", "preempted", "--limit", "0"], runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--sqlite", default=str(REPO / "bench" / "out" / "audit_year.db"))
    ap.add_argument("--pg-url", default=None, help="an empty PostgreSQL database (default: a throwaway server, as root)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        Path(args.sqlite).parent.mkdir(parents=True, exist_ok=True)
        results.append(bench(f"sqlite:///{args.sqlite}", "sqlite", args.runs))
    if args.backend in ("postgresql", "both"):
        if args.pg_url:
            results.append(bench(args.pg_url, "postgresql", args.runs))
        else:
            import shutil
            import tempfile

            from tests.pg_support import PostgresServer, pg_bindir, skip_reason

            why = skip_reason()
            if why:
                print(f"postgresql: skipped: {why}", file=sys.stderr)
            else:
                root = Path(tempfile.mkdtemp(prefix="fleet-bench-pg-"))
                server = PostgresServer(pg_bindir(), root)
                server.start()
                try:
                    results.append(bench(server.url(server.create_database()), "postgresql", args.runs))
                finally:
                    server.stop()
                    shutil.rmtree(root, ignore_errors=True)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
