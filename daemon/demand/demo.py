"""The built-in workload: a seeded, synthetic request log that needs nothing but this repository.

Shape:
- a daily cycle (trough at 04:00, peak at 16:00 UTC; peak/trough ~ 3x, in the
  range ServeGen reports for production pools: 10-minute peak-to-mean 1.9-3.3,
  arXiv 2505.09999 and shared/data/traces/DATA-README.md §2);
- bursts: on average 4 a day, 5-20 minutes long, 1.5-3x the baseline (the Azure
  2023 code trace peaks at 4.2x its mean per minute);
- request sizes from a mixture of the two Azure LLM inference 2023 services
  (Patel et al., Splitwise, ISCA 2024), lognormals matched to their published
  medians and 90th percentiles: conversation (65% of requests) input p50 1020 /
  p90 2735, output p50 129 / p90 424; code (35%) input p50 1469 / p90 5188,
  output p50 13 / p90 55 (tokens).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from daemon.demand.request_log import RequestTrace

DEMO_START = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.utc)  # a Monday
_Z90 = 1.2815515655446004  # standard normal 90th percentile

# (share, input p50, input p90, output p50, output p90): Azure LLM inference 2023.
_MIX = (
    (0.65, 1020.0, 2735.0, 129.0, 424.0),  # conversation
    (0.35, 1469.0, 5188.0, 13.0, 55.0),  # code
)


def _rate_curve(t: np.ndarray, mean_rps: float, rng: np.random.Generator, days: float) -> np.ndarray:
    hour = (t / 3600.0) % 24.0
    daily = 1.0 + 0.5 * np.sin(2 * math.pi * (hour - 10.0) / 24.0)  # min at 04:00, max at 16:00
    rate = mean_rps * daily
    n_bursts = rng.poisson(4.0 * days)
    for _ in range(n_bursts):
        start = rng.uniform(0, days * 86400.0)
        length = rng.uniform(300.0, 1200.0)
        factor = rng.uniform(1.5, 3.0)
        rate = np.where((t >= start) & (t < start + length), rate * factor, rate)
    return rate


def demo_trace(days: float = 3.0, mean_rps: float = 4.0, seed: int = 11) -> RequestTrace:
    rng = np.random.default_rng(seed)
    step = 10.0  # seconds per generation slice
    n = int(math.ceil(days * 86400.0 / step))
    slice_start = np.arange(n) * step
    lam = _rate_curve(slice_start, mean_rps, rng, days) * step
    counts = rng.poisson(lam)
    total = int(counts.sum())
    t = np.repeat(slice_start, counts) + rng.uniform(0.0, step, size=total)
    t.sort()
    which = rng.choice(len(_MIX), size=total, p=[m[0] for m in _MIX])
    ins = np.empty(total)
    outs = np.empty(total)
    for k, (_, ip50, ip90, op50, op90) in enumerate(_MIX):
        sel = which == k
        m = int(sel.sum())
        ins[sel] = rng.lognormal(math.log(ip50), math.log(ip90 / ip50) / _Z90, size=m)
        outs[sel] = rng.lognormal(math.log(op50), math.log(op90 / op50) / _Z90, size=m)
    ins = np.clip(np.rint(ins), 1, 16000).astype(np.int64)
    outs = np.clip(np.rint(outs), 1, 4000).astype(np.int64)
    return RequestTrace(
        source=f"demo(days={days}, mean_rps={mean_rps}, seed={seed})",
        start=DEMO_START, t=t, input_tokens=ins, output_tokens=outs,
    )
