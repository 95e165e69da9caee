"""A window-sampled judge for traces too long to judge every request (multi-day, hundreds of req/s).

The request-level judge runs at roughly 10^5 requests per second on one core, so a
10-day trace at 300 req/s (2.6 x 10^8 requests) takes most of an hour. The
approximation: judge, request by request and with the same model, only a sample of
the trace's time windows, each preceded by a warm-up, and scale up.

- Windows of `window_s` (default 1 h) are numbered from the first arrival; every
  `stride`-th one is judged, from a seeded random offset (systematic sampling, which
  covers the daily cycle evenly when the stride and the day are coprime).
- A judged window also replays the `warmup_s` before it (default 10 min), so its
  first requests meet queues and batches in their steady state rather than an idle
  fleet; warm-up requests are not counted.
- The fleet and routing timelines are the full ones: replicas simply see no traffic
  between judged windows.
- Attainment is the ratio estimate over the judged windows' requests, with its
  standard error from the spread between windows; percentiles are those of the
  judged requests; counts are scaled by the sampling factor.

What it cannot see: anything that carries over more than `warmup_s` into a window
(a queue that takes longer to drain), and events in windows that are not judged (a
burst, a preemption: the estimate's error bar is the between-window spread). Its
error against the request-level judge on the built-in 3-day workload is measured by
`bench/judge_bench.py --sampled` and stated in docs/judge.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.judge.inputs import JudgeInputs, JudgeOptions, Requests
from daemon.judge.judge import judge
from daemon.judge.verdict import STATUS_NAMES, Verdict, _pct


@dataclass(frozen=True)
class SampledVerdict:
    """The judged sample (a Verdict over the sampled windows' requests) and the estimates from it."""

    verdict: Verdict  # every request that was simulated, warm-up included
    counted: np.ndarray  # bool per verdict row: arrived inside a judged window (not warm-up)
    window: np.ndarray  # int per verdict row: the judged window it belongs to (-1: warm-up)
    stride: int
    total_requests: int

    def attainment(self) -> tuple[float, float]:
        """(estimate, standard error) of SLO attainment over the whole trace."""
        w = self.window[self.counted]
        ok = self.verdict.meets_slo[self.counted].astype(np.float64)
        if w.size == 0:
            return 1.0, 0.0
        ids, inv = np.unique(w, return_inverse=True)
        n = np.bincount(inv).astype(np.float64)
        m = np.bincount(inv, weights=ok)
        est = m.sum() / n.sum()
        k = ids.size
        if k < 2:
            return float(est), float("nan")
        # Ratio-estimator variance over sampled windows (finite population correction for systematic sampling).
        resid = m - est * n
        var = (1.0 - 1.0 / self.stride) * k / (k - 1) * np.sum(resid ** 2) / n.sum() ** 2
        return float(est), float(np.sqrt(var))

    def summary(self) -> dict:
        v, c = self.verdict, self.counted
        est, se = self.attainment()
        failed = {name: int(round((v.status[c] == code).sum() * self.stride))
                  for code, name in enumerate(STATUS_NAMES) if code != 0}
        return {
            "requests": self.total_requests, "judged_requests": int(c.sum()), "stride": self.stride,
            "slo_attainment": round(est, 6), "slo_attainment_stderr": round(se, 6),
            "failed_estimate": failed,
            "ttft_s": _pct(v.ttft_s[c]), "tpot_ms": _pct(v.tpot_s[c], 1e3), "e2e_s": _pct(v.e2e_s[c]),
            "judge": {"wall_s": round(v.wall_s, 3)},
        }


def judge_sampled(inputs: JudgeInputs, stride: int, window_s: float = 3600.0, warmup_s: float = 600.0,
                  options: JudgeOptions | None = None, seed: int = 0, offset: int | None = None) -> SampledVerdict:
    """Judge every `stride`-th window of `window_s` (plus its warm-up) and estimate the whole.

    The first judged window is `offset` (default: drawn from `seed`) windows after the first arrival.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if window_s <= 0 or warmup_s < 0:
        raise ValueError("window_s must be > 0 and warmup_s >= 0")
    req = inputs.requests
    n = len(req)
    if n == 0:
        raise ValueError("no requests to judge")
    t = req.arrival_s
    t0 = float(t.min())
    win = np.floor((t - t0) / window_s).astype(np.int64)
    if offset is None:
        offset = int(np.random.default_rng(seed).integers(0, stride))
    offset %= stride
    judged = (win - offset) % stride == 0
    # Warm-up: arrivals in the warmup_s before a judged window's start.
    nxt = win + 1
    start_next = t0 + nxt * window_s
    warm = ((nxt - offset) % stride == 0) & (start_next - t <= warmup_s) & ~judged
    keep = judged | warm
    idx = np.nonzero(keep)[0]
    sub = Requests(req.arrival_s[idx], req.input_tokens[idx], req.output_tokens[idx], req.service[idx],
                   req.services)
    v = judge(JudgeInputs(sub, inputs.fleet, inputs.routing, inputs.grid, inputs.services), options)
    counted = judged[idx]
    window = np.where(counted, win[idx], -1)
    return SampledVerdict(v, counted, window, stride, n)
