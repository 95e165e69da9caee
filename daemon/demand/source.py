"""The demand seam: one protocol for every source of demand, with one time type (UTC datetimes).

Every source (a trace replayed as if live, a tailed request log, Prometheus)
works the same way, in three steps the tick drives:

    poll(now)      -> DemandPoll(windows finished by `now`, cursor after them); moves nothing
    (the tick stores the windows and the cursor in one transaction)
    commit(poll)   -> the source's position moves, only once that transaction committed

so a failed or rolled-back tick polls the same windows again, and a restart
calls `resume(cursor)` with the cursor the store holds: no request is counted
twice or skipped. A cursor is a small JSON-able dict (file offset and inode,
last window end, ...) that only its own kind of source reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Protocol, runtime_checkable

import numpy as np

from daemon.demand.request_log import RequestTrace
from daemon.demand.windows import aggregate
from daemon.domain import BucketGrid, DemandWindow


@dataclass(frozen=True)
class DemandPoll:
    """What one poll found: the finished windows and the position after them."""

    service: str
    windows: tuple[DemandWindow, ...]
    cursor: dict
    # Problems worth an operator's attention (malformed rows with file and line, a
    # rotated file that could not be found...), logged and alerted by the tick.
    problems: tuple[str, ...] = ()
    bad_rows: int = 0
    # (request bytes, prompt tokens) of requests a gateway answered in full (format haproxy):
    # what the gateway's bytes-per-token fit learns from.
    size_samples: tuple[tuple[int, int], ...] = ()


@runtime_checkable
class DemandSource(Protocol):
    """A service's demand. `kind` names the cursor format; `service` the service it feeds."""

    service: str
    kind: str

    def resume(self, cursor: dict | None) -> None: ...

    def poll(self, now: datetime) -> DemandPoll: ...

    def commit(self, poll: DemandPoll) -> None: ...


def epoch(t: datetime) -> float:
    if t.tzinfo is None:
        raise ValueError("naive datetime at the demand seam; use UTC-aware datetimes")
    return t.timestamp()


def from_epoch(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


@dataclass
class TraceReplay:
    """Replays a request log as if it were live, mapping trace second 0 to `origin`.

    `speedup` trace seconds pass per clock second (a day-long trace shown in an
    hour has speedup 24); window starts are in clock time and each window spans
    `window_s` clock seconds. The cursor keeps the origin, so a restarted daemon
    goes on with the trace where it stopped instead of starting it over.
    """

    service: str
    trace: RequestTrace
    grid: BucketGrid
    window_s: float
    origin: datetime
    speedup: float = 1.0
    kind: str = "trace"
    _next: int = 0  # next window index to emit (committed)
    _t_clock: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._t_clock = self.trace.t / self.speedup
        self.n_windows = int(math.ceil((self.trace.duration_s / self.speedup + 1e-9) / self.window_s)) or 1

    @property
    def end(self) -> datetime:
        return self.origin + timedelta(seconds=self.n_windows * self.window_s)

    def resume(self, cursor: dict | None) -> None:
        if not cursor:
            return
        if cursor.get("source") == self.trace.source and cursor.get("origin"):
            self.origin = datetime.fromisoformat(cursor["origin"])
            self._next = int(cursor.get("next", 0))

    def _cursor(self, nxt: int) -> dict:
        return {"source": self.trace.source, "origin": self.origin.isoformat(), "next": nxt}

    def poll(self, now: datetime) -> DemandPoll:
        done = min(int((now - self.origin).total_seconds() // self.window_s), self.n_windows)
        if done <= self._next:
            return DemandPoll(self.service, (), self._cursor(self._next))
        # Only the slice of the (sorted) trace inside these windows: a replay polls every tick.
        lo, hi = np.searchsorted(self._t_clock, [self._next * self.window_s, done * self.window_s], side="left")
        wins = aggregate(self.service, self.grid, self.origin, self.window_s, self._t_clock[lo:hi],
                         self.trace.input_tokens[lo:hi], self.trace.output_tokens[lo:hi], self._next, done)
        return DemandPoll(self.service, tuple(wins), self._cursor(done))

    def commit(self, poll: DemandPoll) -> None:
        self._next = max(self._next, int(poll.cursor["next"]))

    def preview(self, before: datetime, count: int) -> list[DemandWindow]:
        """The first `count` windows, shifted to end at `before`: a warm start's assumed history."""
        first = aggregate(self.service, self.grid, self.origin, self.window_s, self._t_clock,
                          self.trace.input_tokens, self.trace.output_tokens, 0, min(count, self.n_windows))
        shift = (self.origin - before) + timedelta(seconds=len(first) * self.window_s)
        return [replace(w, start=w.start - shift) for w in first]
