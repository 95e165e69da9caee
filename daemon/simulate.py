"""Replay: the real tick code in virtual time over a whole workload, against the simulated cloud.

"What would this policy have cost last week?" The loop, the store and the
provider are the ones fleetd uses; only the clock is virtual and the demand
comes from a request log (or the built-in workload).

Warm start: a running deployment has history and a fleet when a week begins,
so the replay starts `warmup_s` before the trace with the trace's opening
minutes as the assumed prior demand. Costs and SLO attainment are counted over
the trace's own span only.

Capacity-based SLO attainment: for each observed window, the share of its
requests that the RUNNING replicas at the window's start could carry within SLO,
pool by pool along the plan's routing table, with MaxTput from the capacity
table (a pool loaded past 1.0 serves the fraction 1/load of what it is sent).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Mapping, Sequence

import structlog

from daemon.config import Config
from daemon.demand.request_log import RequestTrace
from daemon.demand.source import TraceReplay
from daemon.domain import CapacityTable, DemandWindow, Plan
from daemon.lifecycle import Reason
from daemon.loop.tick import run_tick
from daemon.store.migrate import upgrade
from daemon.store.repo import Store, instance_cost
from daemon.store.schema import Decision, Instance, InstanceEvent, SimulationRun
from daemon.wiring import System, build_provider, build_system, load_workload, open_store

log = structlog.get_logger("fleet.simulate")


class VirtualClock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def window_attainment(w: DemandWindow, plan: Plan | None, running: dict[tuple[str, str], int],
                      capacity: CapacityTable) -> float:
    """Requests of window `w` served within SLO by the running replicas, per the plan's routes."""
    total = w.requests
    if total <= 0:
        return 0.0
    if plan is None and not running:
        return 0.0
    plan_routes = plan.routes if plan is not None else ()
    rates = [[c / w.seconds for c in row] for row in w.counts]
    # A gateway never sends to a pool with no healthy replica: the plan's weights are
    # kept among pools that have running replicas; a bucket whose planned pools are all
    # still booting goes to the service's running pools in proportion to their replicas.
    up = {pool: n for (svc, pool), n in running.items() if svc == w.service and n > 0}
    planned = defaultdict(list)
    for r in plan_routes:
        if r.service == w.service and r.weight > 0:
            planned[r.input_bucket].append((r.pool, r.weight))
    load: dict[str, float] = defaultdict(float)
    sent: dict[str, float] = defaultdict(float)
    for i, row in enumerate(rates):
        routes = [(p, wt) for p, wt in planned.get(i, []) if p in up]
        if not routes:
            routes = [(p, float(n)) for p, n in up.items()]
        norm = sum(wt for _, wt in routes)
        for j, r in enumerate(row):
            if r <= 0:
                continue
            for pool, weight in routes:
                tput = capacity.get(w.service, pool)
                part = r * weight / norm
                if tput is None or tput[i][j] <= 0:
                    continue  # this pool cannot serve the bucket within SLO: unserved
                load[pool] += part / tput[i][j]
                sent[pool] += part
    served = 0.0
    for pool, lo in load.items():
        n = running.get((w.service, pool), 0)
        frac = 1.0 if lo <= n else (n / lo if lo > 0 else 1.0)
        served += sent[pool] * frac
    return min(1.0, served / (total / w.seconds))


@dataclass
class SimulationSummary:
    data: dict
    # The replay's store, kept open when simulate(keep_store=True) ran it in memory (the
    # comparison judges it before it goes); None otherwise.
    store: Store | None = None

    def as_dict(self) -> dict:
        return self.data


def workload_for(cfg: Config, trace_path: str | None) -> RequestTrace:
    """The first service's workload: `trace_path`, else its configured trace, else the demo."""
    return load_workload(cfg, cfg.services[0], trace_path)


def workloads_for(cfg: Config, paths: Mapping[str, str] | Sequence[str] | None = None) -> dict[str, RequestTrace]:
    """One workload per service: the paths given (by service name, or in the config's service
    order), else each service's configured trace, else its built-in workload."""
    names = [s.name for s in cfg.services]
    if paths is None:
        given: dict[str, str] = {}
    elif isinstance(paths, Mapping):
        given = dict(paths)
    else:
        paths = list(paths)
        if len(paths) > len(names):
            raise ValueError(f"{len(paths)} traces for {len(names)} service(s) ({', '.join(names)}): one per service")
        given = dict(zip(names, paths))
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"trace given for service(s) {unknown}, which the config does not define ({names})")
    return {svc.name: load_workload(cfg, svc, given.get(svc.name)) for svc in cfg.services}


def replay_traces(cfg: Config, trace: RequestTrace | Mapping[str, RequestTrace]) -> dict[str, RequestTrace]:
    """A single trace drives the first service (the others their configured workloads); a mapping, each its own."""
    if isinstance(trace, Mapping):
        unknown = sorted(set(trace) - {s.name for s in cfg.services})
        if unknown:
            raise ValueError(f"trace given for service(s) {unknown}, which the config does not define")
        return {s.name: trace[s.name] if s.name in trace else load_workload(cfg, s) for s in cfg.services}
    return {s.name: trace if k == 0 else load_workload(cfg, s) for k, s in enumerate(cfg.services)}


def simulate(cfg: Config, trace: RequestTrace | Mapping[str, RequestTrace], db_url: str,
             warmup_s: float | None = None, progress: Callable[[float, dict], None] | None = None, *,
             policy: Callable | None = None, capacity: CapacityTable | None = None,
             prior: Mapping[str, Sequence[DemandWindow]] | None = None, keep_store: bool = False
             ) -> SimulationSummary:
    """Replay `trace` (one per service: see `replay_traces`) through the tick in virtual time.

    Every service's trace starts playing at the same origin, the first service's trace
    start. `policy` replaces what the loop decides (Loop.policy: a baseline of
    daemon/policies); `capacity` reuses a capacity table already built from `cfg`;
    `prior` is the demand history the deployment had before the replay (shifted to
    end where the replay's clock starts; default: the trace's opening minutes);
    `keep_store` (with an in-memory SQLite URL) keeps the store open in the result.
    """
    wall0 = time.perf_counter()
    traces = replay_traces(cfg, trace)
    target = _sqlite_file(db_url)
    if target is not None:
        # A replay into a SQLite file runs in memory and is written out whole at the end
        # (VACUUM INTO): the database is the same, the ticks are several times faster.
        if target.exists():
            _refuse_used(open_store(cfg, db_url, durable=False), db_url)
            for p in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
                p.unlink(missing_ok=True)
        store = open_store(cfg, "sqlite://", durable=False)
    else:
        store = open_store(cfg, db_url, durable=False)
    upgrade(store.engine)
    _refuse_used(store, db_url)
    window_s = cfg.loop.window_s
    tick_s = cfg.loop.tick_interval_s
    if warmup_s is None:
        warmup_s = cfg.loop.lead_time_s + 2 * tick_s
    first = traces[cfg.services[0].name]
    origin = first.start
    grid = cfg.buckets.grid()
    clock = VirtualClock(origin - timedelta(seconds=warmup_s))
    # A replay always runs against the simulated cloud, whatever provider.kind says.
    provider = build_provider(cfg.model_copy(update={"provider": cfg.provider.model_copy(update={"kind": "simulated"})}),
                              clock)
    # Each service is fed from its own trace, all starting at the same origin; a replay drives no real gateway.
    replays = {name: TraceReplay(name, tr, grid, window_s, origin) for name, tr in traces.items()}
    if capacity is not None:
        loop = System(cfg, store, provider, dict(replays), clock, capacity).loop()
    else:
        loop = build_system(cfg, clock=clock, store=store, provider=provider, sources=dict(replays),
                            gateway=False).loop()
    loop.policy = policy
    count = max(1, int(math.ceil(cfg.policy.scale_down_delay_s / window_s / 2)))
    with store.session() as s:
        for name, replay in replays.items():
            if prior is not None and name in prior:
                Store.add_demand_windows(s, _ending_at(list(prior[name]), clock.now))
            else:
                Store.add_demand_windows(s, replay.preview(before=clock.now, count=count))
    end = max(r.end for r in replays.values())
    total_span = (end - clock.now).total_seconds()
    served = demanded = 0.0
    per_window: list[float] = []
    last_plan: Plan | None = None
    last_running: dict = {}
    failed_ticks = 0
    ticks = 0
    sim0 = time.perf_counter()
    first_error: str | None = None
    while clock.now <= end:
        # The forecast refit runs at its scheduled virtual times, between ticks, as fleetd's job does.
        loop.refit(clock.now)
        result = run_tick(loop)
        ticks += 1
        if result.outcome == "failed":
            failed_ticks += 1
            first_error = first_error or result.error
        for w in result.windows:
            if w.start < origin:
                continue
            a = window_attainment(w, last_plan, last_running, loop.capacity)
            served += a * w.requests
            demanded += w.requests
            if w.requests > 0:
                per_window.append(a)
        if result.plan is not None:
            last_plan = result.plan
        last_running = result.running
        if progress is not None:
            done = (clock.now - (origin - timedelta(seconds=warmup_s))).total_seconds()
            progress(min(1.0, done / total_span) if total_span > 0 else 1.0,
                     {"tick": ticks, "at": clock.now.isoformat(), "cost_per_hour": result.plan.cost_per_hour
                      if result.plan else None})
        clock.advance(tick_s)
    sim_s = time.perf_counter() - sim0

    with store.session() as s:
        hours: dict[str, float] = defaultdict(float)
        cost = 0.0
        for row in s.query(Instance).all():
            c, h = _clipped(row, origin, end)
            cost += c
            if h > 0:
                hours[f"{row.gpu}x{row.gpu_count}/{row.market}"] += h
        preemptions = s.query(InstanceEvent).filter(InstanceEvent.reason == str(Reason.PREEMPTED),
                                                   InstanceEvent.at >= origin).count()
        launches = s.query(InstanceEvent).filter(InstanceEvent.reason == str(Reason.LAUNCH_ACCEPTED)).count()
        failures = s.query(InstanceEvent).filter(InstanceEvent.to_state == "failed").count()
        decisions = s.query(Decision).count()
        summary = {
            "workload": " + ".join(tr.source for tr in traces.values()) if len(traces) > 1 else first.source,
            "requests": sum(len(tr) for tr in traces.values()),
            "bad_rows": sum(len(tr.bad_rows) for tr in traces.values()),
            "virtual_start": origin.isoformat(),
            "virtual_end": end.isoformat(),
            "virtual_hours": round((end - origin).total_seconds() / 3600.0, 3),
            "total_cost_usd": round(cost, 4),
            "slo_attainment": round(served / demanded, 4) if demanded > 0 else 1.0,
            "slo_attainment_worst_window": round(min(per_window), 4) if per_window else 1.0,
            "instance_hours": {k: round(v, 3) for k, v in sorted(hours.items())},
            "preemptions": preemptions,
            "launches": launches,
            "failures": failures,
            "decisions": decisions,
            "failed_ticks": failed_ticks,
            "policy": getattr(policy, "name", None) or "ours",
            "ticks": ticks,
            "ticks_per_s": round(ticks / sim_s, 1) if sim_s > 0 else None,
            "first_tick_error": first_error,
            "capacity_sources": {f"{svc}/{pool}": src for (svc, pool), src in sorted(loop.capacity.provenance.items())},
            "wall_seconds": round(time.perf_counter() - wall0, 2),
            "db": db_url,
        }
        s.add(SimulationRun(started_at=_utcnow(), virtual_start=origin, virtual_end=end,
                            workload=summary["workload"][:512], summary=summary))
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.engine.connect() as c:
            c.exec_driver_sql("VACUUM INTO ?", (str(target),))
    return SimulationSummary(summary, store if keep_store else None)


def _ending_at(windows: list[DemandWindow], at: datetime) -> list[DemandWindow]:
    """History windows moved in time so the last one ends at `at` (a warm start's prior demand)."""
    if not windows:
        return []
    last = max(windows, key=lambda w: w.start)
    shift = at - (last.start + timedelta(seconds=last.seconds))
    return [replace(w, start=w.start + shift) for w in windows]


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database)
    return None


def _refuse_used(store: Store, db_url: str) -> None:
    from sqlalchemy import inspect

    if not inspect(store.engine).has_table("decisions"):
        return
    with store.session() as s:
        existing = s.query(Decision).count()
    if existing:
        raise ValueError(f"{db_url} already holds {existing} decisions; simulate into a fresh database")


def _clipped(row: Instance, start: datetime, end: datetime) -> tuple[float, float]:
    if row.launched_at is None:
        return 0.0, 0.0
    a = max(row.launched_at, start)
    b = min(row.ended_at or end, end)
    if b <= a:
        return 0.0, 0.0
    h = (b - a).total_seconds() / 3600.0
    return h * row.price_per_hour, h


def _utcnow() -> datetime:
    from datetime import timezone

    return datetime.now(timezone.utc)


__all__ = ["simulate", "workload_for", "workloads_for", "replay_traces", "VirtualClock", "window_attainment", "instance_cost"]
