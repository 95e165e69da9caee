"""Demand sources for the loop: each `poll(now)` returns the windows completed since the last poll."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np

from daemon.demand.traces import RequestTrace
from daemon.demand.windows import aggregate
from daemon.domain import BucketGrid, DemandWindow


class DemandSource(Protocol):
    service: str

    def poll(self, now: datetime) -> list[DemandWindow]: ...


class TraceReplay:
    """Replays a request log as if it were live, mapping trace second 0 to `origin`.

    `speedup` trace seconds pass per clock second (a live demo of a day-long
    trace in an hour has speedup 24); window starts are in clock time and each
    window spans `window_s` clock seconds.
    """

    def __init__(self, service: str, trace: RequestTrace, grid: BucketGrid, window_s: float,
                 origin: datetime, speedup: float = 1.0):
        self.service = service
        self.trace = trace
        self.grid = grid
        self.window_s = window_s
        self.origin = origin
        self.speedup = speedup
        self._next = 0  # next window index to emit
        self._t_clock = trace.t / speedup
        self.n_windows = int(math.ceil((trace.duration_s / speedup + 1e-9) / window_s)) or 1

    @property
    def end(self) -> datetime:
        return self.origin + timedelta(seconds=self.n_windows * self.window_s)

    def poll(self, now: datetime) -> list[DemandWindow]:
        done = int((now - self.origin).total_seconds() // self.window_s)
        done = min(done, self.n_windows)
        if done <= self._next:
            return []
        # Only the slice of the (sorted) trace inside these windows: a replay polls every tick.
        lo, hi = np.searchsorted(self._t_clock, [self._next * self.window_s, done * self.window_s], side="left")
        out = aggregate(self.service, self.grid, self.origin, self.window_s, self._t_clock[lo:hi],
                        self.trace.input_tokens[lo:hi], self.trace.output_tokens[lo:hi], self._next, done)
        self._next = done
        return out

    def preview(self, before: datetime, count: int) -> list[DemandWindow]:
        """The first `count` windows, shifted to end at `before`: a warm start's assumed history."""
        first = aggregate(self.service, self.grid, self.origin, self.window_s, self._t_clock,
                          self.trace.input_tokens, self.trace.output_tokens, 0, min(count, self.n_windows))
        shift = (self.origin - before) + timedelta(seconds=len(first) * self.window_s)
        return [DemandWindow(w.service, w.start - shift, w.seconds, w.counts, w.input_tokens, w.output_tokens)
                for w in first]
