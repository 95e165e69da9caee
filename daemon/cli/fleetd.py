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
    from daemon.wiring import open_store

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2
    from daemon.preflight import startup_refusal  # a config it cannot run is refused here, in one line
    if (why := startup_refusal(cfg, args.config)) is not None:
        print(f"fleetd: {why}", file=sys.stderr)
        return 2
    store = open_store(cfg)
    try:
        ensure_current(store.engine, cfg.store.auto_upgrade)
    except SchemaError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 3
    from daemon.store.repo import Store

    with store.session() as s:
        n = Store.close_interrupted_decisions(s, _now())
    if n:
        log.warning("interrupted_decisions_closed", count=n)

    from daemon.demand.errors import DemandInputError
    from daemon.loop.tick import run_tick
    from daemon.wiring import build_system

    try:
        system = build_system(cfg, clock=_now, store=store)
    except DemandInputError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2
    # The first call to SkyPilot starts its API server (tens of seconds): do it before the
    # first tick, and fail here, clearly, rather than inside a tick.
    try:
        system.provider.list()
    except Exception as e:
        log.error("provider_unavailable", provider=cfg.provider.kind, error=f"{type(e).__name__}: {e}")
    loop = system.loop()
    from daemon.redact import mask_url  # the password never reaches a log line

    log.info("started", services=[s.name for s in cfg.services], provider=cfg.provider.kind,
             store=mask_url(cfg.store.url), tick_interval_s=cfg.loop.tick_interval_s, dry_run=cfg.policy.dry_run,
             paused=cfg.policy.paused)
    if args.once:
        result = run_tick(loop)
        return 0 if result.outcome != "failed" else 1
    from daemon.loop.store_guard import StoreGuard  # database down: ticks skipped with back-off, alerted once back
    run_tick = StoreGuard.for_store(loop.store, _now, cfg.loop.tick_interval_s).wrap(run_tick)

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
