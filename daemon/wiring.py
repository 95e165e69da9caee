"""The one place that builds a running system from config: store, provider, demand sources, clock, capacity.

`fleetd`, every `fleetctl` command that needs more than the store, and the
replay call these functions; nothing else constructs providers or demand
sources. (Karpenter's operator setup is one function; Ray autoscaler v2 builds
its reconciler from one config. Two places that wire the same system drift:
that is how a live feed once broke inside every tick while every unit test passed.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from daemon.config import Config, ServiceConfig
from daemon.demand.source import DemandSource
from daemon.domain import CapacityTable
from daemon.store.repo import Store
from providers.base import Provider

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class System:
    cfg: Config
    store: Store
    provider: Provider
    sources: dict[str, DemandSource]
    clock: Clock
    capacity: CapacityTable
    gateway: object | None = None  # daemon.gateway.Gateway when [gateway] enabled

    def loop(self):
        from daemon.loop.tick import Loop

        return Loop(cfg=self.cfg, store=self.store, provider=self.provider, sources=self.sources, clock=self.clock,
                    capacity=self.capacity, gateway=self.gateway)


def open_store(cfg: Config, url: str | None = None, *, durable: bool = True, daemon: bool = False) -> Store:
    """`durable=False` (replays, whose database can be made again) skips fsync on commit;
    `daemon=True` (fleetd) bounds sessions and connects by the leader lease's TTL."""
    return Store.open(url or cfg.store.url, durable=durable, lease_ttl_s=cfg.leader.ttl_s if daemon else None)


def build_provider(cfg: Config, clock: Clock) -> Provider:
    if cfg.provider.kind == "simulated":
        from providers.simulated import SimulatedProvider

        if os.environ.get("FLEET_SIM_FAULTS"):  # tests only: a misbehaving cloud (providers/faults.py)
            from providers.faults import journal_from_environ, wrap_from_environ

            return wrap_from_environ(SimulatedProvider(cfg.provider.simulated, clock, journal_from_environ()))
        return SimulatedProvider(cfg.provider.simulated, clock)
    from providers.skypilot import SkyPilotProvider  # the real clouds; imported only when configured

    return SkyPilotProvider.from_config(cfg, clock=clock)


def build_source(cfg: Config, svc: ServiceConfig, origin: datetime) -> DemandSource:
    """A service's demand source from its `[services.demand]` section.

    `origin` is where a trace or the demo workload starts playing (a restarted
    daemon resumes its cursor's origin instead).
    """
    d = svc.demand
    grid, window_s = cfg.buckets.grid(), cfg.loop.window_s
    if d.kind == "request-log":
        from daemon.demand.tail import RequestLogTail

        return RequestLogTail(svc.name, d.path, grid, window_s, fmt=d.format, columns=d.columns,
                              on_bad_row=d.on_bad_row, lateness_s=d.lateness_s, backfill_s=cfg.loop.history_s)
    if d.kind == "prometheus":
        from dataclasses import replace as _replace

        from daemon.demand.prometheus import PrometheusClient, PrometheusFeed, PrometheusQueries

        p = d.prometheus
        overrides = {k: v for k, v in (("requests", p.requests_query), ("input_buckets", p.input_buckets_query),
                                       ("output_buckets", p.output_buckets_query)) if v}
        queries = _replace(PrometheusQueries(), **overrides)
        return PrometheusFeed(svc.name, PrometheusClient(p.url, p.selector, queries, p.timeout_s), grid, window_s,
                              lateness_s=p.lateness_s, backfill_s=p.backfill_s, max_backfill_s=cfg.loop.history_s)
    from daemon.demand.source import TraceReplay

    return TraceReplay(svc.name, load_workload(cfg, svc), grid, window_s, origin, speedup=d.speedup)


def load_workload(cfg: Config, svc: ServiceConfig, path: str | None = None):
    """The request trace a `trace` or `demo` source plays (`path` overrides the config's)."""
    from daemon.demand.demo import demo_trace
    from daemon.demand.request_log import read_trace

    d = svc.demand
    if path is not None or d.kind == "trace":
        fmt = d.format if d.kind in ("trace", "request-log") else "auto"
        return read_trace(path or d.path, fmt=fmt, on_bad_row=d.on_bad_row, columns=d.columns or None,
                          service=svc.name)
    return demo_trace(days=d.demo_days, mean_rps=d.demo_mean_rps, seed=d.demo_seed)


def build_sources(cfg: Config, origin: datetime) -> dict[str, DemandSource]:
    return {svc.name: build_source(cfg, svc, origin) for svc in cfg.services}


def resume_sources(store: Store, sources: dict[str, DemandSource]) -> None:
    """Each source goes on from the cursor the store holds (committed with its last windows)."""
    with store.session() as s:
        cursors = Store.cursors(s)
    for name, src in sources.items():
        kind, cursor = cursors.get(name, (None, None))
        if kind == src.kind:
            src.resume(cursor)


def build_gateway(cfg: Config):
    """The HAProxy gateway the loop keeps in step with each applied tick ([gateway] enabled), or None.

    Its state directory gets what HAProxy needs to start (maps, backends.cfg, the Lua filter)
    where missing, so a HAProxy started from `fleetctl gateway config` comes up routing."""
    if not cfg.gateway.enabled:
        return None
    from daemon.gateway import Gateway

    gw = Gateway(cfg)
    gw.init_state_dir()
    return gw


def build_capacity(cfg: Config) -> CapacityTable:
    from daemon.capacity import capacity_table

    return capacity_table(cfg)


def build_system(cfg: Config, *, clock: Clock = wall_clock, store: Store | None = None,
                 provider: Provider | None = None, sources: dict[str, DemandSource] | None = None,
                 resume: bool = True, gateway: bool = True) -> System:
    """A running system: the store must already hold the current schema (fleetd migrates first).

    Parts given are used as they are (the replay brings its own sources and a
    fresh store); the rest is built from `cfg`.
    """
    store = store or open_store(cfg)
    provider = provider or build_provider(cfg, clock)
    if sources is None:
        sources = build_sources(cfg, clock())
        if resume:
            resume_sources(store, sources)
    return System(cfg, store, provider, sources, clock, build_capacity(cfg), build_gateway(cfg) if gateway else None)
