"""Rolling-origin evaluation of the size-mix forecast (issue 15, point 3).

At every origin the estimator sees the windows that ended by then and says
what mix to plan for; it is scored against the mix observed in the window at
the horizon. Three errors, each a total-variation distance (0 = same, 1 = disjoint):

- input shares: 0.5 * sum_i |p_in(i) - p_in_true(i)|;
- output given input: sum_i p_in_true(i) * TV(P(out | i), P_true(out | i)) over the
  input buckets the target window saw (how wrong the output distribution the
  router plans per input class is, weighted by how much traffic it carries);
- joint shares: TV over the (input, output) cells (what the planner consumes).

Compared, on the same origins and targets:

- `estimate_mix` (forecast.mix: forgetting, conditional output with shrinkage, shift detection);
- the last window's mix (what a loop without a mix model would plan for);
- the last `naive_span_s` of windows pooled (a steadier naive).

Only the windows before the origin are passed to each estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from daemon.domain import DemandWindow
from forecast.mix import MixConfig, estimate_mix


@dataclass(frozen=True)
class MixErrors:
    name: str
    horizon_s: float
    origin_s: np.ndarray
    input_tv: np.ndarray
    output_tv: np.ndarray
    joint_tv: np.ndarray

    def summary(self, mask: np.ndarray | None = None) -> dict:
        m = np.ones(len(self.origin_s), dtype=bool) if mask is None else mask
        out = {"n": int(m.sum())}
        for key in ("input_tv", "output_tv", "joint_tv"):
            v = getattr(self, key)[m]
            out[key] = float(np.mean(v)) if len(v) else math.nan
            out[key + "_p90"] = float(np.quantile(v, 0.9)) if len(v) else math.nan
        return out


def _parts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input shares, P(out | in) rows (empty rows: the pooled output), joint shares) of a count matrix."""
    n = counts.sum()
    if n <= 0:
        z = np.zeros_like(counts)
        return np.zeros(counts.shape[0]), z, z
    p_in = counts.sum(axis=1) / n
    pooled = counts.sum(axis=0) / n
    rows = counts.sum(axis=1, keepdims=True)
    cond = np.where(rows > 0, counts / np.maximum(rows, 1e-300), pooled[None, :])
    return p_in, cond, counts / n


def mix_errors(pred_joint: np.ndarray, pred_cond: np.ndarray, true_counts: np.ndarray) -> tuple[float, float, float]:
    """(input TV, output-given-input TV weighted by the true input shares, joint TV)."""
    t_in, t_cond, t_joint = _parts(true_counts)
    p_in = pred_joint.sum(axis=1)
    s = p_in.sum()
    p_in = p_in / s if s > 0 else p_in
    in_tv = 0.5 * float(np.abs(p_in - t_in).sum())
    row_tv = 0.5 * np.abs(pred_cond - t_cond).sum(axis=1)
    out_tv = float(np.sum(t_in * row_tv))
    pj = pred_joint / pred_joint.sum() if pred_joint.sum() > 0 else pred_joint
    return in_tv, out_tv, 0.5 * float(np.abs(pj - t_joint).sum())


def _window_sum(wins: Sequence[DemandWindow]) -> np.ndarray:
    return np.sum([np.asarray(w.counts, float) for w in wins], axis=0)


def evaluate_mix(windows: Sequence[DemandWindow], horizon_s: float, target_s: float, *, first_origin_s: float,
                 step_s: float | None = None, config: MixConfig | None = None, naive_span_s: float = 300.0,
                 min_target_requests: float = 20.0) -> dict[str, MixErrors]:
    """Score the estimators at every origin from `first_origin_s` on (windows in start order).

    The target is the window [origin + horizon - target_s, origin + horizon):
    the mix the plan made at the origin will meet. Targets with fewer than
    `min_target_requests` requests are skipped (their observed mix is noise).
    """
    wins = sorted(windows, key=lambda w: w.start_s)
    if not wins:
        raise ValueError("no windows")
    ends = np.array([w.start_s + w.seconds for w in wins])
    starts = np.array([w.start_s for w in wins])
    step = step_s or float(wins[0].seconds)
    cfg = config or MixConfig()
    names = ("estimate_mix", "last_window", f"last_{naive_span_s / 60:g}min")
    rec: dict[str, list] = {n: [] for n in names}
    origins = []
    t = first_origin_s
    while t + horizon_s <= ends[-1] + 1e-6:
        past = [w for w, e in zip(wins, ends) if e <= t + 1e-6]
        tgt = [w for w, s0, e in zip(wins, starts, ends) if s0 >= t + horizon_s - target_s - 1e-6 and e <= t + horizon_s + 1e-6]
        if past and tgt:
            true = _window_sum(tgt)
            if true.sum() >= min_target_requests:
                est = estimate_mix(past, t, cfg)
                preds: dict[str, tuple[np.ndarray, np.ndarray]] = {
                    names[0]: (np.asarray(est.joint), np.asarray(est.output_given_input))}
                last = next((w for w in reversed(past) if w.requests > 0), past[-1])
                _, c_last, j_last = _parts(np.asarray(last.counts, float))
                preds[names[1]] = (j_last, c_last)
                span = [w for w in past if w.start_s + w.seconds > t - naive_span_s + 1e-6] or [last]
                _, c_span, j_span = _parts(_window_sum(span))
                preds[names[2]] = (j_span, c_span)
                for n, (j, c) in preds.items():
                    rec[n].append(mix_errors(j, c, true))
                origins.append(t)
        t += step
    if not origins:
        raise ValueError("no origin with a target window holding requests")
    o = np.array(origins)
    return {n: MixErrors(n, horizon_s, o, *(np.array(x) for x in zip(*r))) for n, r in rec.items()}


# --- ServeGen: 6-hour pool windows that publish token-length quantiles, not buckets -------------


def shares_from_quantiles(edges: Sequence[float], p50: float, p90: float, p99: float) -> np.ndarray:
    """Bucket shares of a token-length distribution known only by its p50/p90/p99.

    The CDF is taken piecewise linear in log(tokens) through (1, 0), (p50, .5),
    (p90, .9), (p99, .99) and (p99^2 / p90, 1) (the tail continued at the
    p90->p99 slope). An assumption, stated: ServeGen's pool files publish these
    quantiles only (DATA-README 3d), so the bucket shares are approximate, the
    same way for every estimator.
    """
    qs = [max(1.0, float(p50)), max(1.0, float(p90)), max(1.0, float(p99))]
    for i in range(1, 3):
        qs[i] = max(qs[i], qs[i - 1] * 1.0001)
    top = qs[2] * qs[2] / qs[1]
    xs = np.log([1.0, *qs, max(top, qs[2] * 1.0001)])
    fs = np.array([0.0, 0.5, 0.9, 0.99, 1.0])
    xs[0] = min(xs[0], xs[1] - 1e-6)

    def cdf(x: float) -> float:
        if x <= 0:
            return 0.0
        return float(np.interp(math.log(x), xs, fs)) if math.isfinite(x) else 1.0

    e = list(edges) + [math.inf]
    return np.array([cdf(e[i + 1]) - cdf(e[i]) for i in range(len(edges))])


def servegen_windows(path, model: str, input_edges: Sequence[float], output_edges: Sequence[float],
                     origin_s: float = 0.0) -> list[DemandWindow]:
    """One DemandWindow per 6-hour ServeGen pool window, counts = requests x input shares x output shares.

    Input and output are published as separate marginals, so the joint is their
    product (no conditional structure to forecast here: only the input and output
    shares are scored on this data).
    """
    import pandas as pd

    from forecast.series import from_epoch

    df = pd.read_csv(path)
    if "model" not in df.columns:
        raise ValueError(f"{path}: no column 'model'")
    g = df[df["model"] == model].sort_values("window_start_s")
    if g.empty:
        raise ValueError(f"{path}: no rows for model {model!r}")
    out = []
    for _, r in g.iterrows():
        need = ["covered_est_requests", "input_tokens_p50", "input_tokens_p90", "input_tokens_p99",
                "output_tokens_p50", "output_tokens_p90", "output_tokens_p99"]
        if any(pd.isna(r[c]) for c in need):
            continue
        pin = shares_from_quantiles(input_edges, r.input_tokens_p50, r.input_tokens_p90, r.input_tokens_p99)
        pout = shares_from_quantiles(output_edges, r.output_tokens_p50, r.output_tokens_p90, r.output_tokens_p99)
        counts = float(r.covered_est_requests) * np.outer(pin, pout)
        out.append(DemandWindow(model, from_epoch(origin_s + float(r.window_start_s)), 21600.0,
                                tuple(tuple(float(x) for x in row) for row in counts)))
    return out


def seasonal_mix_errors(windows: Sequence[DemandWindow], horizon_s: float, period_s: float, first_origin_s: float,
                        estimate: Callable | None = None) -> MixErrors:
    """The 'same window one period earlier' naive for coarse windows (ServeGen: yesterday's 6-hour window)."""
    wins = sorted(windows, key=lambda w: w.start_s)
    by_start = {round(w.start_s): w for w in wins}
    rows, origins = [], []
    for w in wins:
        t = w.start_s + w.seconds - horizon_s  # origin whose horizon window is w
        if t < first_origin_s - 1e-6:
            continue
        prev = by_start.get(round(w.start_s - period_s))
        if prev is None:
            continue
        _, c, j = _parts(np.asarray(prev.counts, float))
        rows.append(mix_errors(j, c, np.asarray(w.counts, float)))
        origins.append(t)
    if not rows:
        raise ValueError("no origin with a window one period earlier")
    return MixErrors("same_window_yesterday", horizon_s, np.array(origins), *(np.array(x) for x in zip(*rows)))
