"""The tick while the database is away: skip it, say so critically, retry with back-off, alert once back.

Every phase of a tick writes to the store, so a tick run while the database is
unreachable can only fail, each time with a traceback in the log and nowhere to
record the failure. `StoreGuard` wraps the tick job instead:

- a tick that failed or stood by is followed by a probe (a fresh connection, `SELECT 1`,
  bounded by a connect timeout); if the database does not answer it is down;
- while it is down, ticks are skipped: each one logs one critical line (URL
  with the password masked, what failed, for how long, when the next try is);
  tries back off from every tick to every `max_backoff_s` (doubling);
- the first probe that answers records an alert in the store saying how long
  the database was unreachable and how many ticks were skipped, then the tick
  runs as usual. Nothing already recorded is lost: the store is the truth and
  the provider is re-synced by the next tick.

Pure bookkeeping around an injected probe and clock, so tests fake the
database's answers, not our logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import structlog

from daemon.redact import mask_url

log = structlog.get_logger("fleet.store")

Probe = Callable[[], "str | None"]  # None: the database answered; else one line saying what failed


def connection_probe(url: str, timeout_s: float = 5.0) -> Probe:
    """A fresh connection and `SELECT 1` with a connect timeout. A SQLite store is a local file,
    never "unreachable" (and a probe would create a missing file): its ticks are not guarded."""
    from sqlalchemy.engine import make_url

    from daemon.preflight import connect_problem

    if make_url(url).get_backend_name() == "sqlite":
        return lambda: None
    return lambda: connect_problem(url, timeout_s)


@dataclass
class StoreGuard:
    url: str
    probe: Probe
    clock: Callable[[], datetime]
    tick_interval_s: float = 60.0
    max_backoff_s: float = 300.0  # at least one try every 5 minutes, however long the outage
    down_since: datetime | None = None
    failures: int = 0  # probes in a row that failed
    skipped: int = 0  # ticks not run during this outage
    next_try: datetime | None = None
    first_error: str = ""
    _alerts: list = field(default_factory=list)  # (at, message) recorded once the store is back (for tests)

    @classmethod
    def for_store(cls, store, clock: Callable[[], datetime], tick_interval_s: float) -> "StoreGuard":
        url = store.engine.url.render_as_string(hide_password=False)
        return cls(url, connection_probe(url), clock, tick_interval_s)

    def wrap(self, run_tick):
        """The tick job: `run_tick(loop)` guarded."""

        def guarded(loop):
            return self.tick(loop, run_tick)

        guarded.__name__ = getattr(run_tick, "__name__", "run_tick")
        return guarded

    @property
    def shown(self) -> str:
        return mask_url(self.url) or ""

    def backoff_s(self) -> float:
        """Wait before the n-th retry: one tick, then doubling, at most max_backoff_s."""
        base = max(self.tick_interval_s, 1.0)
        return min(max(self.max_backoff_s, base), base * 2 ** max(0, self.failures - 1))

    def tick(self, loop, run_tick):
        now = self.clock()
        if self.down_since is not None:
            if self.next_try is not None and now < self.next_try:
                return self._skip(now, self.first_error)
            problem = self.probe()
            if problem is not None:
                return self._down(now, problem)
            self._recovered(loop, now)
        result = run_tick(loop)
        # A failed tick, or a standby one (a leader that lost the database loses its lease
        # first and stands by): is the database there?
        if getattr(result, "outcome", None) in ("failed", "standby"):
            problem = self.probe()
            if problem is not None:
                self._down(self.clock(), problem, skipped=False)
        return result

    # -- states ----------------------------------------------------------------------------

    def _down(self, now: datetime, problem: str, skipped: bool = True):
        if self.down_since is None:
            self.down_since, self.first_error = now, problem
        self.failures += 1
        self.next_try = now + timedelta(seconds=self.backoff_s())
        return self._skip(now, problem, counted=skipped)

    def _skip(self, now: datetime, problem: str, counted: bool = True):
        if counted:
            self.skipped += 1
        down_for = (now - self.down_since).total_seconds() if self.down_since else 0.0
        log.critical("store_unreachable", url=self.shown, error=problem, down_for_s=round(down_for, 1),
                     ticks_skipped=self.skipped,
                     next_try=self.next_try.isoformat() if self.next_try else None)
        return _skipped_result(now, f"database {self.shown} unreachable: {problem}")

    def _recovered(self, loop, now: datetime) -> None:
        down_for = (now - self.down_since).total_seconds()
        msg = (f"database {self.shown} was unreachable for {down_for:.0f} s (from {self.down_since.isoformat()} to "
               f"{now.isoformat()}; {self.skipped} tick(s) skipped, {self.failures} failed tries): {self.first_error}")
        log.warning("store_back", url=self.shown, down_for_s=round(down_for, 1), ticks_skipped=self.skipped)
        try:
            from daemon.store.repo import Store

            with loop.store.session() as s:
                Store.alert(s, now, "critical", "store_unreachable", msg[:4000])
            self._alerts.append((now, msg))
        except Exception as e:  # noqa: BLE001 - gone again between probe and write: the next try records it
            log.critical("store_unreachable", url=self.shown, error=f"{type(e).__name__}: {str(e)[:200]}")
            return
        self.down_since, self.failures, self.skipped, self.next_try, self.first_error = None, 0, 0, None, ""


def _skipped_result(now: datetime, error: str):
    from daemon.loop.tick import TickResult

    return TickResult(None, now, "store_unreachable", {}, None, (), {}, error)
