"""What the loop carries from one tick to the next, in one place, safe against the refit job.

fleetd runs two scheduler jobs on one Loop: the tick, and the forecast refit
(slow statsmodels fits, never inside a tick). Both read and write this state,
so every access holds its lock, and the refit fits on a snapshot outside it:
the lock is held for list copies and dictionary swaps, never for a fit.
The store stays the truth; this is a cache of what the store and the last
ticks already said, rebuilt from the store after a restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from daemon.domain import DemandForecast, DemandWindow, Plan


@dataclass
class LoopState:
    # Demand history per service: read from the store once, then extended with the
    # windows the loop itself records (a tick does not re-read days of rows).
    history: dict[str, list[DemandWindow]] | None = None
    # Fitted forecast models per service, replaced whole by the refit (never mutated).
    forecast_states: dict = field(default_factory=dict)
    last_forecasts: dict[str, DemandForecast] = field(default_factory=dict)
    last_plan: tuple | None = None  # (Plan, PlanBasis) of the last acceptable solve
    # The market events (preemptions, launch outcomes) the market rules read, as last queried;
    # None after any transition this loop wrote, so the next tick reads them again.
    market_events: list | None = None
    # The provider listing of the last sync that changed nothing, and the instance rows it read:
    # while the listing stays the same and nothing is written, the next sync would change nothing.
    synced_listing: tuple | None = None
    synced_rows: list | None = None
    # The fencing token of the lease this loop last led with (None: not led yet, or no lease):
    # a new token means the daemon has just become leader and starts again from the store.
    led_with: int | None = None
    # Gateway: drains still holding connections (instance names; their termination waits), and
    # the (request bytes, prompt tokens) pairs its bytes-per-token fit learns from.
    drain_busy: frozenset = frozenset()
    _sizes: object = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def reset(self) -> None:
        """Forget what came from the store (history, last plan): a new leader reads it afresh.
        Fitted forecast models stay: they are functions of the same history, only older."""
        with self._lock:
            self.history = None
            self.last_plan = None
            self.store_changed()

    def extend_history(self, loaded: dict[str, list[DemandWindow]] | None, new: list[DemandWindow],
                       since: datetime) -> dict[str, list[DemandWindow]]:
        """Add this tick's windows, drop what is older than `since`; returns a snapshot."""
        with self._lock:
            if self.history is None:
                self.history = {k: list(v) for k, v in (loaded or {}).items()}
            else:
                for w in new:
                    self.history.setdefault(w.service, []).append(w)
            for ws in self.history.values():
                # Windows arrive in time order: what fell out of the history is at the front.
                k = 0
                while k < len(ws) and ws[k].start < since:
                    k += 1
                if k:
                    del ws[:k]
            return {name: list(ws) for name, ws in self.history.items()}

    def size_tracker(self, cfg):
        if self._sizes is None:
            from daemon.gateway.bytes_per_token import BytesPerTokenTracker

            g = cfg.gateway
            self._sizes = BytesPerTokenTracker(g.bytes_per_token_quantile, g.bytes_per_token_min_samples)
        return self._sizes

    def store_changed(self) -> None:
        """A transition was written: what was cached from the store is stale."""
        self.market_events = None
        self.synced_listing = None
        self.synced_rows = None

    def remember_sync(self, listing: tuple, rows: list) -> None:
        self.synced_listing, self.synced_rows = listing, list(rows)

    def unchanged_since_sync(self, listing: tuple) -> bool:
        return self.synced_rows is not None and self.market_events is not None and self.synced_listing == listing

    def has_history(self) -> bool:
        with self._lock:
            return self.history is not None

    def history_snapshot(self) -> dict[str, list[DemandWindow]] | None:
        with self._lock:
            return None if self.history is None else {k: list(v) for k, v in self.history.items()}

    def forecast_inputs(self) -> tuple[dict, dict]:
        with self._lock:
            return dict(self.forecast_states), dict(self.last_forecasts)

    def set_forecast_states(self, states: dict) -> None:
        with self._lock:
            self.forecast_states = dict(states)

    def set_last_forecasts(self, forecasts: dict[str, DemandForecast]) -> None:
        with self._lock:
            self.last_forecasts = dict(forecasts)

    def remember_plan(self, entry: tuple[Plan, object] | None) -> None:
        with self._lock:
            self.last_plan = entry

    def plan_memory(self) -> tuple | None:
        with self._lock:
            return self.last_plan


def history_since(now: datetime, history_s: float) -> datetime:
    return now - timedelta(seconds=history_s)
