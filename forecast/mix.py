"""Request-size mix: share of requests per (input bucket, output bucket) to plan for.

What a router can know when a request arrives is its input length, not its
output length. So the mix is estimated as the product of
- the share of requests per input bucket, and
- the output-length distribution conditional on the input bucket (Mélange
  routes on input length and takes output from what was seen for that input;
  BACKGROUND §1),
each with exponential forgetting (a window's weight halves every
`half_life_s`), because ServeGen's token mix moves over days (DATA-README §3d).

Shift detection: a short-memory estimate is compared with the long-memory one;
when their total-variation distance exceeds `shift_tv` and the short one rests
on enough requests, the short one is used (the old mix is not coming back soon
enough to plan on). Sparse conditional rows are shrunk towards the pooled
output distribution (pseudo-counts), so an input bucket seen twice does not get
a 0/1 output distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import numpy as np

from daemon.domain import DemandWindow, Matrix
from forecast.series import to_epoch


@dataclass(frozen=True)
class MixConfig:
    half_life_s: float = 6 * 3600.0
    short_half_life_s: float = 1800.0
    prior_requests: float = 20.0  # pseudo-counts pulling a conditional row towards the pooled output mix
    shift_tv: float = 0.15  # total-variation distance (0..1) that counts as a shift
    min_short_requests: float = 200.0  # the short estimate must rest on at least this many (weighted) requests


@dataclass(frozen=True)
class MixEstimate:
    joint: Matrix  # share per (input, output) bucket, sums to 1 (all zero when no request was seen)
    input_share: tuple[float, ...]
    output_given_input: Matrix
    shift: bool
    tv_distance: float
    effective_requests: float
    memory: str  # "long" or "short" (after a shift)


@dataclass(frozen=True)
class MixSnapshot:
    """The forgetting-weighted request counts at `at` (epoch s): what `estimate_mix` carries forward.

    Exponential forgetting is recursive (counts(t) = counts(at) * 2^(-(t - at)/h) +
    the windows since), so a tick adds only the windows that ended after `at`
    instead of re-weighting days of them. Built by `mix_snapshot` at a fit.
    """

    at: float
    long: np.ndarray  # weighted counts, long memory (half_life_s)
    short: np.ndarray  # weighted counts, short memory (short_half_life_s)
    half_life_s: float
    short_half_life_s: float


def _counts_array(history: Sequence[DemandWindow]) -> np.ndarray:
    try:
        counts = np.array([w.counts for w in history], dtype=float)
    except ValueError:
        counts = None
    if counts is None or counts.ndim != 3:
        shapes = sorted({(len(w.counts), len(w.counts[0]) if w.counts else 0) for w in history})
        raise ValueError(f"demand windows disagree on the bucket grid: {shapes}")
    return counts


def _weighted_counts(history: Sequence[DemandWindow], now_s: float, half_life_s: float,
                     counts: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    if not history:
        return np.zeros((0, 0)), 0.0
    counts = _counts_array(history) if counts is None else counts
    ends = np.array([w.start_s + w.seconds for w in history])
    weights = 0.5 ** (np.maximum(0.0, now_s - ends) / half_life_s)
    total = np.einsum("w,wij->ij", weights, counts)
    return total, float(total.sum())


def mix_snapshot(history: Sequence[DemandWindow], now: datetime | float, config: MixConfig | None = None) -> MixSnapshot:
    """The weighted counts of every window finished by `now` (run at a fit, not every tick)."""
    cfg = config or MixConfig()
    now_s = to_epoch(now)
    past = [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]
    if not past:
        return MixSnapshot(now_s, np.zeros((0, 0)), np.zeros((0, 0)), cfg.half_life_s, cfg.short_half_life_s)
    counts = _counts_array(past)
    long_c, _ = _weighted_counts(past, now_s, cfg.half_life_s, counts)
    short_c, _ = _weighted_counts(past, now_s, cfg.short_half_life_s, counts)
    return MixSnapshot(now_s, long_c, short_c, cfg.half_life_s, cfg.short_half_life_s)


def carry_snapshot(snap: MixSnapshot, since: Sequence[DemandWindow], now: datetime | float) -> MixSnapshot:
    """`snap` brought forward to `now` with the windows that ended after it (a refit's cheap snapshot)."""
    now_s = to_epoch(now)
    long_c, short_c = _carry(snap, since, now_s)
    return MixSnapshot(now_s, long_c, short_c, snap.half_life_s, snap.short_half_life_s)


def _carry(snap: MixSnapshot, since: Sequence[DemandWindow], now_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(long, short) weighted counts at now_s: the snapshot decayed plus the windows after it."""
    dt = max(0.0, now_s - snap.at)
    long_c = snap.long * 0.5 ** (dt / snap.half_life_s)
    short_c = snap.short * 0.5 ** (dt / snap.short_half_life_s)
    if since:
        counts = _counts_array(since)
        if long_c.size == 0:
            long_c = np.zeros(counts.shape[1:])
            short_c = np.zeros(counts.shape[1:])
        elif counts.shape[1:] != long_c.shape:
            raise ValueError(f"demand windows disagree on the bucket grid: {[long_c.shape, counts.shape[1:]]}")
        long_c = long_c + _weighted_counts(since, now_s, snap.half_life_s, counts)[0]
        short_c = short_c + _weighted_counts(since, now_s, snap.short_half_life_s, counts)[0]
    return long_c, short_c


def _joint(counts: np.ndarray, prior: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = counts.sum()
    if n <= 0:
        z = np.zeros_like(counts)
        return z, np.zeros(counts.shape[0]), z
    p_in = counts.sum(axis=1) / n
    pooled = counts.sum(axis=0) / n
    rows = counts.sum(axis=1, keepdims=True)
    cond = (counts + prior * pooled[None, :]) / (rows + prior)
    return p_in[:, None] * cond, p_in, cond


def estimate_mix(history: Sequence[DemandWindow], now: datetime | float, config: MixConfig | None = None,
                 snapshot: MixSnapshot | None = None) -> MixEstimate:
    """The size mix to plan for at `now` from observed windows (gaps are simply absent).

    With `snapshot` (made at an earlier fit), only the windows that ended after
    `snapshot.at` are read from `history`; the result is the same as from all
    the windows (forgetting is recursive), at a fraction of the cost.
    """
    cfg = config or MixConfig()
    now_s = to_epoch(now)
    if snapshot is not None and snapshot.at <= now_s + 1e-6 and (
            snapshot.half_life_s, snapshot.short_half_life_s) == (cfg.half_life_s, cfg.short_half_life_s):
        since = [w for w in history if snapshot.at + 1e-6 < w.start_s + w.seconds <= now_s + 1e-6]
        long_c, short_c = _carry(snapshot, since, now_s)
    else:
        past = [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]  # finished windows only
        if past:
            counts = _counts_array(past)
            long_c = _weighted_counts(past, now_s, cfg.half_life_s, counts)[0]
            short_c = _weighted_counts(past, now_s, cfg.short_half_life_s, counts)[0]
        else:
            long_c = short_c = np.zeros((0, 0))
    n_long, n_short = float(long_c.sum()), float(short_c.sum())
    if n_long <= 0:
        shape = long_c.shape
        zero = tuple(tuple(0.0 for _ in range(shape[1])) for _ in range(shape[0]))
        return MixEstimate(zero, tuple(0.0 for _ in range(shape[0])), zero, False, 0.0, 0.0, "long")
    j_long, p_long, c_long = _joint(long_c, cfg.prior_requests)
    j_short, p_short, c_short = _joint(short_c, cfg.prior_requests)
    tv = 0.5 * float(np.abs(j_long - j_short).sum()) if n_short > 0 else 0.0
    shift = tv > cfg.shift_tv and n_short >= cfg.min_short_requests
    joint, p_in, cond, n_eff = (j_short, p_short, c_short, n_short) if shift else (j_long, p_long, c_long, n_long)
    s = joint.sum()
    joint = joint / s if s > 0 else joint
    return MixEstimate(
        joint=_mat(joint), input_share=tuple(float(x) for x in p_in), output_given_input=_mat(cond),
        shift=shift, tv_distance=tv, effective_requests=n_eff, memory="short" if shift else "long",
    )


def _mat(a: np.ndarray) -> Matrix:
    return tuple(tuple(float(x) for x in row) for row in a)


def mix_tv(a: Matrix, b: Matrix) -> float:
    """Total-variation distance between two share matrices (0 = same, 1 = disjoint)."""
    return 0.5 * float(np.abs(np.asarray(a, float) - np.asarray(b, float)).sum())


def is_unknown(m: Matrix) -> bool:
    return all(math.isclose(x, 0.0) for row in m for x in row)
