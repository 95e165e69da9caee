"""A request-rate series on a regular time grid, with missing windows kept as NaN.

Every forecaster works on this one shape. Converting demand windows (or a rate
CSV, or a Prometheus range query) into it is where gaps are decided: a window
that was not observed is NaN, never 0. A window that was observed and saw no
requests is a real 0.

Times are epoch seconds (UTC). Phase of day is taken from the epoch, so a
daily season is aligned to UTC midnight whatever the history's first window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

import numpy as np

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


def to_epoch(t: datetime | float | int) -> float:
    if isinstance(t, datetime):
        if t.tzinfo is None:  # the domain's datetimes are UTC; naive means UTC
            t = t.replace(tzinfo=timezone.utc)
        return t.timestamp()
    return float(t)


def from_epoch(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


@dataclass(frozen=True, eq=False)
class RateSeries:
    """values[k] = mean request rate (req/s) over [t0 + k*step_s, t0 + (k+1)*step_s)."""

    t0: float
    step_s: float
    values: np.ndarray

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise ValueError(f"step_s must be > 0, got {self.step_s}")
        v = np.asarray(self.values, dtype=float)
        if v.ndim != 1:
            raise ValueError("values must be one-dimensional")
        object.__setattr__(self, "values", v)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end(self) -> float:
        """End of the last window (the earliest time a forecast from this series can be made)."""
        return self.t0 + len(self.values) * self.step_s

    @property
    def index0(self) -> int:
        """Absolute grid index of the first window: epoch / step. Season phases derive from it."""
        return int(round(self.t0 / self.step_s))

    def times(self) -> np.ndarray:
        return self.t0 + self.step_s * np.arange(len(self.values))

    def observed(self) -> int:
        return int(np.sum(~np.isnan(self.values)))

    def until(self, t: float) -> "RateSeries":
        """Windows that ended at or before t (what was known at time t)."""
        n = int(math.floor((t - self.t0) / self.step_s + 1e-9))
        n = max(0, min(len(self.values), n))
        return RateSeries(self.t0, self.step_s, self.values[:n])

    def last(self, n: int) -> "RateSeries":
        n = min(n, len(self.values))
        return RateSeries(self.end - n * self.step_s, self.step_s, self.values[len(self.values) - n :])

    def resample(self, step_s: float, min_coverage: float = 0.5) -> "RateSeries":
        """Mean rate over coarser windows aligned to multiples of step_s since the epoch.

        A coarse window is NaN unless at least `min_coverage` of its fine windows
        were observed (a mostly-missing window would report a biased rate).
        """
        if abs(step_s - self.step_s) < 1e-9:
            return self
        ratio = step_s / self.step_s
        k = int(round(ratio))
        if k < 1 or abs(ratio - k) > 1e-6:
            raise ValueError(f"cannot resample step {self.step_s}s to {step_s}s (not an integer multiple)")
        if len(self.values) == 0:
            return RateSeries(math.floor(self.t0 / step_s) * step_s, step_s, np.array([]))
        start = math.floor(self.t0 / step_s) * step_s
        lead = int(round((self.t0 - start) / self.step_s))
        v = np.concatenate([np.full(lead, np.nan), self.values])
        # the trailing partial coarse window is dropped: it is not finished yet
        n_full = len(v) // k
        v = v[: n_full * k].reshape(n_full, k) if n_full else np.empty((0, k))
        obs = np.sum(~np.isnan(v), axis=1)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(obs[:, None] > 0, v, 0.0), axis=1) if n_full else np.array([])
        mean = np.where(obs >= max(1, math.ceil(min_coverage * k)), mean, np.nan)
        return RateSeries(start, step_s, mean)


def series_from_points(times: Sequence[float], rates: Sequence[float], step_s: float | None = None) -> RateSeries:
    """Place (window start, rate) points on a regular grid; absent windows become NaN.

    The step is the smallest positive spacing when not given. Two points in one
    window is an error: the caller's data is not what it claims to be.
    """
    t = np.asarray(times, dtype=float)
    r = np.asarray(rates, dtype=float)
    if len(t) == 0:
        raise ValueError("no points")
    order = np.argsort(t, kind="stable")
    t, r = t[order], r[order]
    if step_s is None:
        d = np.diff(t)
        d = d[d > 0]
        if len(d) == 0:
            raise ValueError("cannot infer the window length from a single timestamp; give step_s")
        step_s = float(np.min(d))
    idx = np.round((t - t[0]) / step_s).astype(np.int64)
    if np.any(np.abs((t - t[0]) / step_s - idx) > 1e-3):
        raise ValueError(f"timestamps are not on a regular {step_s:g}s grid")
    if np.any(np.diff(idx) == 0):
        dup = int(np.argmax(np.diff(idx) == 0))
        raise ValueError(f"two points in one {step_s:g}s window at t={t[dup]:g}")
    out = np.full(int(idx[-1]) + 1, np.nan)
    out[idx] = r
    return RateSeries(float(t[0]), float(step_s), out)


def series_from_windows(history: Iterable, step_s: float | None = None) -> RateSeries:
    """DemandWindows (any order, gaps allowed) as a RateSeries of request rates.

    The native step is the most common window length. Windows of one service
    are expected; a caller mixing services gets their rates added per window.
    """
    wins = list(history)
    if not wins:
        raise ValueError("no demand windows")
    secs = np.array([float(w.seconds) for w in wins])
    vals, counts = np.unique(secs, return_counts=True)
    native = float(vals[np.argmax(counts)])
    starts = np.array([w.start_s for w in wins])
    requests = np.array([w.requests for w in wins])
    t0 = float(starts.min())
    k = np.rint((starts - t0) / native).astype(np.int64)
    n = int(k.max()) + 1
    req = np.zeros(n)
    np.add.at(req, k, requests)
    seen = np.zeros(n, dtype=bool)
    seen[k] = True
    rates = np.where(seen, req / native, np.nan)
    series = RateSeries(t0, native, rates)
    if step_s is not None and step_s != native:
        series = series.resample(step_s)
    return series
