"""fleetd: the control-loop daemon (run it under systemd: deploy/fleetd.service; see README).

Start, in this order: the config (`FLEET_DB` in the environment overrides
`store.url`, so a database password can live in the unit's EnvironmentFile
only); on SQLite the single-daemon lock (a second fleetd on the same file
refuses to start); the store migrated; the system built and the provider's
first sync; the leader lease tried once; the metrics exporter; then READY=1
to systemd.

Ticks run under APScheduler 3 (one at a time, coalesced, misfires logged),
beside a lease renewal job and the forecast refit (daemon/service/runner.py).
Only the holder of the leader lease acts; the others stand by and take over
when it lapses. SIGHUP re-reads the config between ticks (a bad file is
refused, naming the key, and the old config runs on). On SIGTERM or SIGINT
(STOPPING=1) the scheduler stops taking new ticks and waits for the tick in
flight to finish, so no tick is left half recorded, then the lease is given
up. A crash (SIGKILL, power) is repaired by whoever leads next: decisions
left `started` are marked `interrupted`, and pending intents are carried out
again (idempotent names).

Exit codes: 0 stopped cleanly, 1 `--once` tick failed, 2 bad config, demand
input or metrics address, 3 store unusable (schema, connection), 4 another
fleetd already runs on this SQLite file.
"""

from __future__ import annotations

import argparse
import os
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

    # Signals first: a SIGHUP during a long start must not kill the process (its default action).
    stop, hup = threading.Event(), threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())

    from daemon.service.notify import Notifier, NotifyError

    try:
        # Unset: child processes (SkyPilot's API server, the solver) must not speak for us.
        notifier = Notifier.from_environ(unset=True)
    except NotifyError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2

    from daemon.logging import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    import structlog

    log = structlog.get_logger("fleetd")

    from daemon.config import ConfigError, load_config
    from daemon.redact import mask_url, redact, url_secrets
    from daemon.service.runner import override_store_url

    try:
        file_cfg = load_config(args.config)
    except ConfigError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2
    env_url = os.environ.get("FLEET_DB") or None
    cfg = override_store_url(file_cfg, env_url)
    url = cfg.store.url
    secrets = url_secrets(url)
    configure_logging(args.log_level, json=args.log_json, secrets=secrets)

    def scrub(e: BaseException) -> str:
        return redact(f"{type(e).__name__}: {e}", secrets)

    from daemon.preflight import startup_refusal  # a config it cannot run is refused here, in one line

    if (why := startup_refusal(cfg, args.config)) is not None:
        print(f"fleetd: {why}", file=sys.stderr)
        return 2

    from daemon.store.lease import AnotherDaemonRunning, single_daemon_lock

    try:
        file_lock = single_daemon_lock(url)
    except AnotherDaemonRunning as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 4
    except OSError as e:
        print(f"fleetd: {mask_url(url)}: cannot take the single-daemon lock: {e}", file=sys.stderr)
        return 3

    from sqlalchemy.exc import SQLAlchemyError

    from daemon.store.migrate import SchemaError, ensure_current
    from daemon.wiring import open_store

    store = open_store(cfg, daemon=True)
    try:
        ensure_current(store.engine, cfg.store.auto_upgrade)
    except SchemaError as e:
        print(f"fleetd: {redact(str(e), secrets)}", file=sys.stderr)
        return 3
    except SQLAlchemyError as e:
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [""])[0]
        print(f"fleetd: {mask_url(url)}: cannot open the store: {redact(first, secrets)}", file=sys.stderr)
        return 3

    from daemon.demand.errors import DemandInputError
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
        log.error("provider_unavailable", provider=cfg.provider.kind, error=scrub(e))

    from daemon.loop.guard import Guard
    from daemon.metrics import FleetMetrics, start_exporter
    from daemon.service.notify import TickWatchdog, watchdog_problem
    from daemon.service.runner import Runner
    from daemon.store.lease import Leadership

    lead = cfg.leader
    # On SQLite the file lock proves this is the only daemon: a live lease is a dead predecessor's.
    leadership = Leadership(store, ttl_s=lead.ttl_s, clock=_now, name=lead.lease_name,
                            min_remaining_s=lead.fence_margin_s, exclusive=file_lock is not None)
    metrics = FleetMetrics()
    exporter = None
    if cfg.metrics.enabled and not args.once:  # nothing scrapes a one-tick process
        try:
            exporter = start_exporter(metrics, cfg.metrics.address, cfg.metrics.port)
        except OSError as e:
            print(f"fleetd: {e.strerror or e}", file=sys.stderr)
            return 2
    dog = TickWatchdog(notifier)
    # Pings come only from ticks: the longest gap is one interval plus the longest tick
    # (a solve at its time limit and the provider calls around it).
    problem = watchdog_problem(cfg.loop.tick_interval_s, cfg.solver.time_limit_s + 30.0, notifier.watchdog_usec)
    if problem:
        log.warning("watchdog_too_short", problem=problem)
    loop = system.loop()
    loop.guard = Guard(leadership, dog)
    runner = Runner(loop, leadership, notifier, metrics, args.config, file_cfg, env_url, exporter,
                    # A tick in flight longer than this is hung: the lease is left to lapse.
                    stall_s=cfg.solver.time_limit_s + 2 * lead.ttl_s)
    role = runner.renew()
    log.info("started", services=[s.name for s in cfg.services], provider=cfg.provider.kind, store=mask_url(url),
             store_from="FLEET_DB" if env_url else "config", role=str(role), holder=leadership.holder,
             tick_interval_s=cfg.loop.tick_interval_s, dry_run=cfg.policy.dry_run, paused=cfg.policy.paused,
             metrics=f"{exporter.address[0]}:{exporter.port}" if exporter else None,
             notify=notifier.enabled, watchdog_s=(notifier.watchdog_usec or 0) / 1e6 or None)
    notifier.ready(status=f"{role}; store migrated, first sync done")

    def finish_up() -> None:
        runner.shutdown()
        if file_lock is not None:
            file_lock.release()

    if args.once:
        result = runner.tick()
        finish_up()
        return 0 if result.outcome != "failed" else 1
    from daemon.loop.store_guard import StoreGuard  # database down: ticks skipped with back-off, alerted once back

    runner.run = StoreGuard.for_store(loop.store, _now, cfg.loop.tick_interval_s).wrap(runner.run)

    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = BackgroundScheduler(timezone=timezone.utc)

    def on_event(ev) -> None:
        if ev.code == EVENT_JOB_MISSED:
            log.warning("job_missed", job=ev.job_id, scheduled=str(ev.scheduled_run_time))
        else:
            log.error("job_crashed", job=ev.job_id, error=scrub(ev.exception))

    def tick_now() -> None:
        """Just became leader: tick at once, and fit the forecasts soon (a standby does not fit)."""
        try:
            sched.modify_job("tick", next_run_time=_now())
            sched.modify_job("forecast_refit", next_run_time=_now() + timedelta(seconds=1))
        except Exception:
            pass  # shutting down

    runner.on_leader = tick_now
    grace = int(cfg.loop.misfire_grace_s)
    sched.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    sched.add_job(runner.tick, "interval", seconds=cfg.loop.tick_interval_s, id="tick", max_instances=1,
                  coalesce=True, misfire_grace_time=grace, next_run_time=_now() + timedelta(milliseconds=10))
    # Renewals between ticks: a standby polls the lease, a leader keeps it through long ticks.
    sched.add_job(runner.renew, "interval", seconds=lead.renew_every_s, id="lease", max_instances=1, coalesce=True,
                  misfire_grace_time=grace)
    # Forecast fits run in their own job (same thread pool), never inside a tick: a slow
    # statsmodels fit delays the next refit, not the control loop.
    sched.add_job(runner.refit, "interval", seconds=60, id="forecast_refit", max_instances=1, coalesce=True,
                  misfire_grace_time=grace, next_run_time=_now() + timedelta(seconds=1))

    def on_signal(signum, _frame) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sched.start()
    interval = cfg.loop.tick_interval_s
    while not stop.wait(0.5):
        if hup.is_set():
            done = runner.reload()  # None: a tick is in flight; tried again in a moment
            if done is not None:
                hup.clear()
                if loop.cfg.loop.tick_interval_s != interval:
                    interval = loop.cfg.loop.tick_interval_s
                    sched.reschedule_job("tick", trigger="interval", seconds=interval)
    notifier.stopping(status="stopping: finishing the tick in flight")
    sched.shutdown(wait=True)  # the tick in flight finishes and records; no new tick starts
    finish_up()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
