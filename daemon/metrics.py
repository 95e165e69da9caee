"""fleetd's Prometheus metrics: a registry, its update from what a tick recorded, an HTTP exporter.

Names and units follow the Prometheus conventions (https://prometheus.io/docs/practices/naming/):
a `gpufleet_` prefix, base units in the name (`_seconds`, `_usd_per_hour`,
`_requests_per_second`), `_total` on counters. Label values come from closed or
configured sets only (service names from the config, GPU types and markets from
the catalog, lifecycle states and plan statuses from enumerations), never instance
names or ids, so the number of series stays bounded whatever the fleet does.
Nothing secret is exported (no URLs, no credentials).

    metrics = FleetMetrics()
    exporter = start_exporter(metrics, cfg.metrics.address, cfg.metrics.port)
    ...end of every tick, in its own read transaction:
    sample, cursor = sample_from_store(session, decision_id, cursor, tick_seconds)
    metrics.record_tick(sample)
    metrics.set_role(leader=True/False); metrics.set_paused(paused)

Counters count from the process start (Prometheus' rate() handles restarts);
`sample_from_store` reads the lifecycle events after a cursor (an event id), so
every launch, termination and preemption is counted once, whichever tick saw it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from daemon.lifecycle import Reason, State

# Closed label sets: anything else is exported as "other".
STATES = tuple(str(s) for s in State)
MARKETS = ("on-demand", "spot")
PLAN_STATUSES = ("optimal", "feasible", "heuristic", "reused", "infeasible", "unbounded", "no_solution",
                 "time_limit", "kept_current", "other")
OUTCOMES = ("applied", "dry_run", "paused", "failed", "standby", "interrupted", "other")
FAILURE_REASONS = (str(Reason.LAUNCH_FAILED), str(Reason.NO_CAPACITY), str(Reason.QUOTA), str(Reason.DRIFT), "other")
# A cap per label (services, GPU types) as a last guard against a runaway set.
MAX_VALUES_PER_LABEL = 64


def _closed(value: str | None, allowed: tuple[str, ...]) -> str:
    v = (value or "").split(":")[0]
    return v if v in allowed else "other"


@dataclass(frozen=True)
class TickSample:
    """What one tick left in the store, in the shape the metrics need."""

    at: datetime
    outcome: str
    tick_seconds: float | None = None
    # (service, gpu, gpu_count, market, state) -> instances, every non-terminal instance
    fleet: dict[tuple[str, str, int, str, str], int] = field(default_factory=dict)
    cost_per_hour: float = 0.0
    planned_cost_per_hour: float | None = None
    forecast_rps: dict[str, float] = field(default_factory=dict)
    observed_rps: dict[str, float] = field(default_factory=dict)
    plan_status: str | None = None
    solve_seconds: float | None = None
    gap: float | None = None
    # (service, gpu, market) -> events since the previous sample
    launches: dict[tuple[str, str, str], int] = field(default_factory=dict)
    terminations: dict[tuple[str, str, str], int] = field(default_factory=dict)
    preemptions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    launch_failures: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # + reason


class FleetMetrics:
    """The registry fleetd exports; `record_tick` is its only writer besides role and pause."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {"service": set(), "gpu": set()}
        self.instances = Gauge("gpufleet_instances", "Instances by service, GPU pool, market and lifecycle state.",
                               ["service", "gpu", "gpu_count", "market", "state"], registry=r)
        self.cost = Gauge("gpufleet_fleet_cost_usd_per_hour",
                          "What the billable fleet costs now, at the prices in effect at launch.", registry=r)
        self.planned_cost = Gauge("gpufleet_planned_cost_usd_per_hour", "Cost of the fleet the last plan wants.",
                                  registry=r)
        self.forecast = Gauge("gpufleet_forecast_requests_per_second",
                              "Forecast request rate at the planning horizon and quantile.", ["service"], registry=r)
        self.observed = Gauge("gpufleet_observed_requests_per_second", "Request rate of the latest demand window.",
                              ["service"], registry=r)
        self.solve = Histogram("gpufleet_plan_solve_duration_seconds", "Planner solve time (fresh solves only).",
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.gap = Gauge("gpufleet_plan_gap_ratio", "Relative MIP gap of the last fresh solve (0 = proven optimal).",
                         registry=r)
        self.status = Gauge("gpufleet_plan_status", "1 for the status of the last plan, 0 for the others.",
                            ["status"], registry=r)
        self.tick_duration = Histogram("gpufleet_tick_duration_seconds", "Wall time of one tick.",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.ticks = Counter("gpufleet_ticks", "Ticks by outcome.", ["outcome"], registry=r)
        self.tick_failures = Counter("gpufleet_tick_failures", "Ticks that failed (recorded as failed decisions).",
                                     registry=r)
        self.last_tick = Gauge("gpufleet_last_tick_timestamp_seconds", "When the last tick ran (Unix time).",
                               registry=r)
        labels = ["service", "gpu", "market"]
        self.launches = Counter("gpufleet_launches", "Launches the provider accepted.", labels, registry=r)
        self.terminations = Counter("gpufleet_terminations", "Instances terminated by the daemon (or cancelled).",
                                    labels, registry=r)
        self.preemptions = Counter("gpufleet_preemptions", "Spot instances taken back by the cloud.", labels,
                                   registry=r)
        self.launch_failures = Counter("gpufleet_launch_failures", "Launches that failed, by reason.",
                                       labels + ["reason"], registry=r)
        self.leader = Gauge("gpufleet_leader", "1 while this daemon holds the leader lease and acts, 0 on standby.",
                            registry=r)
        self.paused = Gauge("gpufleet_paused", "1 while the fleet is paused (fleetctl pause or policy.paused).",
                            registry=r)
        for s in PLAN_STATUSES:
            self.status.labels(status=s).set(0)
        for o in OUTCOMES:
            self.ticks.labels(outcome=o)
        self._fleet_keys: set[tuple] = set()

    def _bounded(self, label: str, value: str) -> str:
        seen = self._seen[label]
        if value in seen:
            return value
        if len(seen) >= MAX_VALUES_PER_LABEL:
            return "other"
        seen.add(value)
        return value

    def _pool(self, service: str, gpu: str, market: str) -> tuple[str, str, str]:
        return self._bounded("service", service), self._bounded("gpu", gpu), _closed(market, MARKETS)

    def record_tick(self, t: TickSample) -> None:
        with self._lock:
            self.ticks.labels(outcome=_closed(t.outcome, OUTCOMES)).inc()
            if t.outcome == "failed":
                self.tick_failures.inc()
            if t.tick_seconds is not None:
                self.tick_duration.observe(t.tick_seconds)
            self.last_tick.set(t.at.timestamp())
            keys = set()
            counts: dict[tuple, int] = {}
            for (svc, gpu, n, market, state), c in t.fleet.items():
                k = (*self._pool(svc, gpu, market)[:2], str(n), _closed(market, MARKETS), _closed(state, STATES))
                counts[k] = counts.get(k, 0) + c
            for k, c in counts.items():
                self.instances.labels(*k).set(c)
                keys.add(k)
            for k in self._fleet_keys - keys:  # a pool that emptied: its series goes away
                self.instances.remove(*k)
            self._fleet_keys = keys
            self.cost.set(t.cost_per_hour)
            if t.planned_cost_per_hour is not None:
                self.planned_cost.set(t.planned_cost_per_hour)
            for svc, v in t.forecast_rps.items():
                self.forecast.labels(service=self._bounded("service", svc)).set(v)
            for svc, v in t.observed_rps.items():
                self.observed.labels(service=self._bounded("service", svc)).set(v)
            if t.plan_status is not None:
                current = _closed(t.plan_status, PLAN_STATUSES)
                for s in PLAN_STATUSES:
                    self.status.labels(status=s).set(1 if s == current else 0)
                if t.plan_status != "reused" and t.solve_seconds is not None:
                    self.solve.observe(t.solve_seconds)
                    if t.gap is not None:
                        self.gap.set(t.gap)
            for counter, events in ((self.launches, t.launches), (self.terminations, t.terminations),
                                    (self.preemptions, t.preemptions)):
                for (svc, gpu, market), n in events.items():
                    counter.labels(*self._pool(svc, gpu, market)).inc(n)
            for (svc, gpu, market, reason), n in t.launch_failures.items():
                self.launch_failures.labels(*self._pool(svc, gpu, market), _closed(reason, FAILURE_REASONS)).inc(n)

    def record_tick_failure(self, tick_seconds: float | None = None) -> None:
        """A tick that failed before anything could be read back (the store is down)."""
        with self._lock:
            self.ticks.labels(outcome="failed").inc()
            self.tick_failures.inc()
            if tick_seconds is not None:
                self.tick_duration.observe(tick_seconds)

    def set_role(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_paused(self, paused: bool) -> None:
        self.paused.set(1 if paused else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- from the store ---------------------------------------------------------------------------


def event_cursor(s) -> int:
    """The latest lifecycle event id: where counting starts when the daemon starts."""
    from sqlalchemy import func, select

    from daemon.store.schema import InstanceEvent

    return int(s.scalar(select(func.coalesce(func.max(InstanceEvent.id), 0))) or 0)


def sample_from_store(s, decision_id: int | None, after_event: int,
                      tick_seconds: float | None = None) -> tuple[TickSample, int]:
    """The sample of the tick that recorded `decision_id`, and the new event cursor.

    A few indexed aggregate queries: the decision row, the non-terminal instances
    grouped by pool and state, the latest demand window per service, and the
    lifecycle events after `after_event`.
    """
    from sqlalchemy import func, select

    from daemon.lifecycle import TERMINAL, BILLABLE
    from daemon.store.schema import Decision, DemandWindowRow, Instance, InstanceEvent

    d = s.get(Decision, decision_id) if decision_id is not None else None
    fleet: dict = {}
    cost = 0.0
    q = (select(Instance.service, Instance.gpu, Instance.gpu_count, Instance.market, Instance.state, func.count(),
                func.sum(Instance.price_per_hour))
         .where(Instance.state.not_in([str(x) for x in TERMINAL]))
         .group_by(Instance.service, Instance.gpu, Instance.gpu_count, Instance.market, Instance.state))
    for svc, gpu, n, market, state, c, price in s.execute(q):
        fleet[(svc, gpu, n, market, state)] = int(c)
        if state in {str(x) for x in BILLABLE}:
            cost += float(price or 0.0)
    observed: dict[str, float] = {}
    t = DemandWindowRow
    latest = (select(t.service, func.max(t.window_start).label("ws")).group_by(t.service)
              .where(t.window_start <= d.at) if d is not None else
              select(t.service, func.max(t.window_start).label("ws")).group_by(t.service)).subquery()
    rows = s.execute(select(t.service, func.sum(t.requests), func.max(t.window_seconds))
                     .join(latest, (t.service == latest.c.service) & (t.window_start == latest.c.ws))
                     .group_by(t.service))
    for svc, req, secs in rows:
        observed[svc] = float(req or 0.0) / float(secs) if secs else 0.0
    events: dict[str, dict] = {"launch_accepted": {}, "terminated": {}, "preempted": {}}
    failures: dict = {}
    cursor = after_event
    ev = (select(InstanceEvent.id, InstanceEvent.reason, InstanceEvent.to_state, Instance.service, Instance.gpu,
                 Instance.market)
          .join(Instance, Instance.id == InstanceEvent.instance_id).where(InstanceEvent.id > after_event))
    for eid, reason, to_state, svc, gpu, market in s.execute(ev):
        cursor = max(cursor, eid)
        key = (svc, gpu, market)
        if reason == str(Reason.LAUNCH_ACCEPTED):
            events["launch_accepted"][key] = events["launch_accepted"].get(key, 0) + 1
        if to_state == str(State.TERMINATED):
            events["terminated"][key] = events["terminated"].get(key, 0) + 1
        if to_state == str(State.PREEMPTED):
            events["preempted"][key] = events["preempted"].get(key, 0) + 1
        if to_state == str(State.FAILED):
            fk = (*key, reason)
            failures[fk] = failures.get(fk, 0) + 1
    plan = (d.plan or {}) if d is not None else {}
    sample = TickSample(
        at=d.at if d is not None else datetime.now().astimezone(),
        outcome=d.outcome if d is not None else "standby", tick_seconds=tick_seconds, fleet=fleet,
        cost_per_hour=round(cost, 6), planned_cost_per_hour=d.planned_cost_per_hour if d is not None else None,
        forecast_rps={k: float(v.get("rate_rps") or 0.0) for k, v in ((d.forecast or {}) if d is not None else {}).items()},
        observed_rps=observed, plan_status=d.plan_status if d is not None else None,
        solve_seconds=d.solve_seconds if d is not None else None, gap=plan.get("gap"),
        launches=events["launch_accepted"], terminations=events["terminated"], preemptions=events["preempted"],
        launch_failures=failures,
    )
    return sample, cursor


# -- the HTTP exporter ------------------------------------------------------------------------


@dataclass
class Exporter:
    server: object
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_exporter(metrics: FleetMetrics, address: str = "127.0.0.1", port: int = 9465) -> Exporter:
    """Serve /metrics on address:port in a daemon thread (port 0: any free port, for tests).

    Raises OSError naming the address when it cannot listen (port taken).
    """
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=address, registry=metrics.registry)
    except OSError as e:
        raise OSError(e.errno, f"metrics exporter cannot listen on {address}:{port}: {e.strerror}") from None
    return Exporter(server, thread)
