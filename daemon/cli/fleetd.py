"""fleetd: the control-loop daemon (run it under systemd; see README).

Ticks run under APScheduler 3 (one at a time, coalesced, misfires logged). On
SIGTERM or SIGINT the scheduler stops taking new ticks and waits for the tick in
flight to finish, so no tick is left half recorded; a crash (SIGKILL, power)
is repaired at the next start: decisions left `started` are marked
`interrupted`, and pending intents are carried out again (idempotent names).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path


def _now() -> datetime:
    return datetime.now(timezone.utc)


def build_sources(cfg, origin: datetime):
    """A live demand source per service (request-log replay or the built-in workload)."""
    from daemon.demand.demo import demo_trace
    from daemon.demand.source import TraceReplay
    from daemon.demand.traces import read_trace

    grid = cfg.buckets.grid()
    sources = {}
    for svc in cfg.services:
        if svc.feed is not None:  # live: a tailed request log or Prometheus
            from forecast.sources.feed import open_feed

            sources[svc.name] = open_feed(svc.feed, svc.name, grid, cfg.loop.window_s)
            continue
        d = svc.demand
        if d.source == "trace":
            trace = read_trace(d.path, fmt=d.format, on_bad_row=d.on_bad_row)
        else:
            trace = demo_trace(days=d.demo_days, mean_rps=d.demo_mean_rps, seed=d.demo_seed)
        sources[svc.name] = TraceReplay(svc.name, trace, grid, cfg.loop.window_s, origin, speedup=d.speedup)
    return sources


def build_provider(cfg, clock):
    if cfg.provider.kind == "simulated":
        from providers.simulated import SimulatedProvider

        return SimulatedProvider(cfg.provider.simulated, clock)
    from providers.skypilot import SkyPilotProvider  # the real clouds; imported only when configured

    return SkyPilotProvider.from_config(cfg, clock=clock)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fleetd", description="GPU fleet autoscaling daemon")
    ap.add_argument("--config", type=Path, help="TOML config (default: built-in defaults)")
    ap.add_argument("--once", action="store_true", help="run one tick and exit")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-json", action="store_true", default=None, help="force JSON logs")
    args = ap.parse_args(argv)

    from daemon.logging import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    import structlog

    log = structlog.get_logger("fleetd")

    from daemon.config import ConfigError, load_config
    from daemon.store.migrate import SchemaError, ensure_current
    from daemon.store.repo import Store

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2
    store = Store.open(cfg.store.url)
    try:
        ensure_current(store.engine, cfg.store.auto_upgrade)
    except SchemaError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 3
    with store.session() as s:
        n = Store.close_interrupted_decisions(s, _now())
    if n:
        log.warning("interrupted_decisions_closed", count=n)

    from daemon.demand.traces import TraceError
    from daemon.loop.tick import Loop, run_tick

    try:
        sources = build_sources(cfg, _now())
    except TraceError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2
    provider = build_provider(cfg, _now)
    # The first call to SkyPilot starts its API server (tens of seconds): do it before the
    # first tick, and fail here, clearly, rather than inside a tick.
    try:
        provider.list()
    except Exception as e:
        log.error("provider_unavailable", provider=cfg.provider.kind, error=f"{type(e).__name__}: {e}")
    loop = Loop(cfg=cfg, store=store, provider=provider, sources=sources, clock=_now)
    log.info("started", services=[s.name for s in cfg.services], provider=cfg.provider.kind, store=cfg.store.url,
             tick_interval_s=cfg.loop.tick_interval_s, dry_run=cfg.policy.dry_run, paused=cfg.policy.paused)
    if args.once:
        result = run_tick(loop)
        return 0 if result.outcome != "failed" else 1

    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
    from apscheduler.schedulers.background import BackgroundScheduler

    stop = threading.Event()
    sched = BackgroundScheduler(timezone=timezone.utc)

    def on_event(ev) -> None:
        if ev.code == EVENT_JOB_MISSED:
            log.warning("tick_missed", scheduled=str(ev.scheduled_run_time))
        else:
            log.error("tick_crashed", error=repr(ev.exception))

    sched.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    sched.add_job(run_tick, "interval", args=[loop], seconds=cfg.loop.tick_interval_s, id="tick",
                  max_instances=1, coalesce=True, misfire_grace_time=int(cfg.loop.misfire_grace_s),
                  next_run_time=_now() + timedelta(milliseconds=10))

    # Forecast fits run in their own job (same thread pool), never inside a tick: a slow
    # statsmodels fit delays the next refit, not the control loop.
    sched.add_job(loop.refit, "interval", seconds=60, id="forecast_refit", max_instances=1, coalesce=True,
                  misfire_grace_time=int(cfg.loop.misfire_grace_s), next_run_time=_now() + timedelta(seconds=1))

    def on_signal(signum, _frame) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sched.start()
    while not stop.wait(1.0):
        pass
    sched.shutdown(wait=True)  # the tick in flight finishes and records; no new tick starts
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
