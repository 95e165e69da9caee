"""fleetd's jobs around the tick: the tick job, the lease renewal, the refit, a SIGHUP reload.

`fleetd` (daemon/cli/fleetd.py) builds one `Runner` and hands its methods to the
scheduler. What each adds to the tick:

- `tick()`: runs `run_tick` under the tick lock, then updates the Prometheus
  metrics from what the tick recorded and the status line systemd shows.
- `renew()`: every `leader.renew_every_s`, renews (leader) or tries to take
  (standby) the lease between ticks, so a leader whose ticks are longer than the
  TTL keeps it and a standby notices a dead leader within one renewal. A tick
  in flight for longer than `stall_s` is taken for hung: the renewal stops, the
  lease lapses and a standby takes over (the hung daemon is fenced out when it
  wakes). On becoming leader it runs a tick at once instead of waiting for the
  schedule.
- `refit()`: the forecast refit, on the leader only.
- `reload()`: a SIGHUP's work, between ticks (never under a tick in flight).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import structlog

from daemon.config import Config
from daemon.loop.tick import Loop, TickResult, run_tick
from daemon.metrics import Exporter, FleetMetrics, TickSample, event_cursor, sample_from_store
from daemon.service.notify import Notifier
from daemon.service.reload import reload_config
from daemon.store.lease import Leadership, Role

log = structlog.get_logger("fleetd")


def override_store_url(cfg: Config, url: str | None) -> Config:
    """The config with `store.url` replaced (FLEET_DB: the password lives in the environment only)."""
    if not url or url == cfg.store.url:
        return cfg
    return cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": url})})


@dataclass
class Runner:
    loop: Loop
    leadership: Leadership
    notifier: Notifier
    metrics: FleetMetrics
    config_path: Path | None
    file_config: Config  # as the file says (before FLEET_DB): what a reload compares with
    store_url_override: str | None = None
    exporter: Exporter | None = None
    stall_s: float = 60.0
    on_leader: Callable[[], None] | None = None  # set by fleetd: run a tick now
    # The tick itself; fleetd wraps it in the store guard (database down: skipped with back-off).
    run: Callable[[Loop], TickResult] = run_tick
    _tick_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _tick_started: float | None = field(default=None, repr=False)
    _event_cursor: int = 0
    _role: Role | None = None
    last: TickResult | None = None

    def __post_init__(self) -> None:
        try:
            with self.loop.store.session() as s:
                self._event_cursor = event_cursor(s)  # count launches etc. from now on
        except Exception:
            self._event_cursor = 0

    # -- the tick ---------------------------------------------------------------------------

    def tick(self) -> TickResult:
        with self._tick_lock:
            self._tick_started = time.monotonic()
            t0 = time.perf_counter()
            try:
                result = self.run(self.loop)
            finally:
                self._tick_started = None
            secs = time.perf_counter() - t0
            self._after_tick(result, secs)
            self.last = result
            return result

    def _after_tick(self, result: TickResult, secs: float) -> None:
        role = self.leadership.role
        self._note_role(role)
        if result.outcome == "standby":
            self.metrics.record_tick(TickSample(at=result.at, outcome="standby", tick_seconds=secs))
            self.notifier.status(f"standby; leader elsewhere ({result.at:%H:%M:%S})")
            return
        try:
            with self.loop.store.session() as s:
                sample, self._event_cursor = sample_from_store(s, result.decision_id, self._event_cursor, secs)
            self.metrics.record_tick(sample)
            self.metrics.set_paused(result.outcome == "paused")
            self.notifier.status(f"{role}; decision {result.decision_id} {result.outcome}; "
                                 f"{sum(sample.fleet.values())} instances; "
                                 f"${sample.cost_per_hour:.2f}/h")
        except Exception as e:  # the store went away after the tick: count the failure, keep going
            self.metrics.record_tick_failure(secs)
            log.warning("metrics_not_updated", error=f"{type(e).__name__}: {e}")

    def _note_role(self, role: Role) -> None:
        self.metrics.set_role(role is Role.LEADER)
        if role != self._role:
            if self._role is not None:
                log.info("role_changed", role=str(role), was=str(self._role))
            self._role = role

    # -- between ticks ------------------------------------------------------------------------

    def renew(self) -> Role:
        started = self._tick_started
        if started is not None and time.monotonic() - started > self.stall_s:
            # Hung: let the lease lapse so a standby takes over; the hung tick is fenced when it wakes.
            log.warning("lease_not_renewed", reason=f"a tick has been in flight for "
                                                    f"{time.monotonic() - started:.0f} s (> {self.stall_s:.0f} s)")
            return self.leadership.role
        before = self.leadership.role
        role = self.leadership.refresh()
        self._note_role(role)
        if before is Role.STANDBY and role is Role.LEADER and self.on_leader is not None:
            self.on_leader()
        return role

    def refit(self, now: datetime | None = None) -> None:
        if self.leadership.role is Role.LEADER:
            self.loop.refit(now)

    def reload(self) -> bool | None:
        """Re-read the config file between ticks. None: a tick is in flight, try again shortly."""
        if not self._tick_lock.acquire(timeout=0.5):
            return None
        try:
            self.notifier.reloading()
            res = reload_config(self.config_path, self.file_config)
            if res.accepted:
                run = override_store_url(res.config, self.store_url_override)
                try:
                    from daemon.capacity import capacity_table

                    capacity = capacity_table(run)
                except Exception as e:
                    log.error("config_reload_refused", error=f"capacity tables: {type(e).__name__}: {e}",
                              path=str(self.config_path))
                    self.notifier.ready(status="reload refused; old config running")
                    return False
                self.file_config = res.config
                self.loop.cfg, self.loop.capacity = run, capacity
                self.loop.state.remember_plan(None)  # the next tick plans under the new config
                log.info("config_reloaded", message=res.describe(), path=str(self.config_path))
            else:
                log.error("config_reload_refused", message=res.describe(), path=str(self.config_path))
            self.notifier.ready(status=res.describe()[:200])
            return res.accepted
        finally:
            self._tick_lock.release()

    def shutdown(self) -> None:
        """After the scheduler stopped: give the lease up (a standby takes over at once), stop the exporter."""
        self.leadership.release()
        if self.exporter is not None:
            try:
                self.exporter.stop()
            except Exception:
                pass
