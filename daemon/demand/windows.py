"""Aggregate request arrivals into demand windows by size bucket."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np

from daemon.domain import BucketGrid, DemandWindow, peaks_of_seconds


def bucket_indices(grid: BucketGrid, input_tokens: np.ndarray, output_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of each request; sizes past the last edge land in the last bucket."""
    i = np.clip(np.searchsorted(np.asarray(grid.input_edges), input_tokens, side="right") - 1, 0, grid.n_input - 1)
    j = np.clip(np.searchsorted(np.asarray(grid.output_edges), output_tokens, side="right") - 1, 0, grid.n_output - 1)
    return i, j


def aggregate(
    service: str,
    grid: BucketGrid,
    origin: datetime,
    window_s: float,
    t: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    first_window: int,
    last_window: int,
) -> list[DemandWindow]:
    """Windows k in [first_window, last_window) of requests at `origin + t` seconds.

    Every window in the range is returned, empty ones included: inside an
    observed span, no request means a rate of zero (unlike a collection gap,
    which the caller simply never observes).
    """
    if last_window <= first_window:
        return []
    k = np.floor(t / window_s).astype(np.int64)
    sel = (k >= first_window) & (k < last_window)
    k, ii, oo = k[sel], input_tokens[sel], output_tokens[sel]
    bi, bj = bucket_indices(grid, ii, oo)
    n_w = last_window - first_window
    counts = np.zeros((n_w, grid.n_input, grid.n_output), dtype=np.int64)
    np.add.at(counts, (k - first_window, bi, bj), 1)
    in_sum = np.bincount(k - first_window, weights=ii, minlength=n_w)
    out_sum = np.bincount(k - first_window, weights=oo, minlength=n_w)
    peaks = _window_peaks(t[sel] - k * window_s, k - first_window, n_w, window_s)
    out = []
    for w in range(n_w):
        start = origin + timedelta(seconds=(first_window + w) * window_s)
        out.append(DemandWindow(
            service=service, start=start, seconds=window_s,
            counts=tuple(tuple(float(c) for c in row) for row in counts[w]),
            input_tokens=float(in_sum[w]), output_tokens=float(out_sum[w]), peaks=peaks[w],
        ))
    return out


def _window_peaks(offsets: np.ndarray, w: np.ndarray, n_w: int, window_s: float) -> list[tuple]:
    """DemandWindow.peaks of every window at once (offsets: seconds into window w)."""
    n = int(math.floor(window_s))
    if n < 2:
        return [()] * n_w
    per_s = np.zeros((n_w, n))
    np.add.at(per_s, (w, np.clip(np.floor(offsets).astype(np.int64), 0, n - 1)), 1.0)
    return peaks_of_seconds(per_s)


def windows_from_rows(rows, grid: BucketGrid, window_s: float, service: str, first_k: int | None = None,
                      last_k: int | None = None) -> list[DemandWindow]:
    """Windows k (start k * window_s since the epoch) of the given request rows, by size bucket.

    Windows from `first_k` (default: the first row's) up to `last_k` exclusive
    (default: past the last row's) are all returned, empty ones included: a
    request log observes continuously, so a minute with no request in it is a
    real 0. Rows outside the range are ignored.
    """
    ks = [math.floor(r.timestamp / window_s) for r in rows]
    if first_k is None:
        if not ks:
            return []
        first_k = min(ks)
    if last_k is None:
        if not ks:
            return []
        last_k = max(ks) + 1
    if last_k <= first_k:
        return []
    n = last_k - first_k
    counts = np.zeros((n, grid.n_input, grid.n_output))
    tin = np.zeros(n)
    tout = np.zeros(n)
    offs, wins = [], []
    for r, k in zip(rows, ks):
        if first_k <= k < last_k:
            i, j = grid.locate(r.input_tokens, r.output_tokens)
            counts[k - first_k, i, j] += 1
            tin[k - first_k] += r.input_tokens
            tout[k - first_k] += r.output_tokens
            offs.append(r.timestamp - k * window_s)
            wins.append(k - first_k)
    peaks = _window_peaks(np.asarray(offs, dtype=float), np.asarray(wins, dtype=np.int64), n, window_s)
    return [DemandWindow(service, datetime.fromtimestamp((first_k + w) * window_s, tz=timezone.utc), window_s,
                         tuple(tuple(float(c) for c in row) for row in counts[w]), float(tin[w]), float(tout[w]),
                         peaks[w])
            for w in range(n)]
