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


def _weighted_counts(history: Sequence[DemandWindow], now_s: float, half_life_s: float) -> tuple[np.ndarray, float]:
    if not history:
        return np.zeros((0, 0)), 0.0
    shapes = {(len(w.counts), len(w.counts[0]) if w.counts else 0) for w in history}
    if len(shapes) != 1:
        raise ValueError(f"demand windows disagree on the bucket grid: {sorted(shapes)}")
    counts = np.array([w.counts for w in history], dtype=float)
    ends = np.array([w.start_s + w.seconds for w in history])
    weights = 0.5 ** (np.maximum(0.0, now_s - ends) / half_life_s)
    total = np.einsum("w,wij->ij", weights, counts)
    return total, float(total.sum())


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


def estimate_mix(history: Sequence[DemandWindow], now: datetime | float, config: MixConfig | None = None) -> MixEstimate:
    """The size mix to plan for at `now` from observed windows (gaps are simply absent)."""
    cfg = config or MixConfig()
    now_s = to_epoch(now)
    past = [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]  # finished windows only
    long_c, n_long = _weighted_counts(past, now_s, cfg.half_life_s)
    if n_long <= 0:
        shape = long_c.shape
        zero = tuple(tuple(0.0 for _ in range(shape[1])) for _ in range(shape[0]))
        return MixEstimate(zero, tuple(0.0 for _ in range(shape[0])), zero, False, 0.0, 0.0, "long")
    short_c, n_short = _weighted_counts(past, now_s, cfg.short_half_life_s)
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
