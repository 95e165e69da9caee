"""Request logs synthesised from Alibaba ServeGen's published statistics (arXiv 2505.09999).

ServeGen publishes no request log: per client of a model pool, every 10 minutes, the
client's mean request rate and the coefficient of variation (CV) of its inter-arrival
times, and every 6 hours its token-length distribution (shared/data/traces/servegen,
DATA-README §2). From those, seeded, we draw one request log per pool:

Arrivals. For each client and 10-minute window with rate r > 0, the number of
requests is Poisson(alpha x r x 600), and their times inside the window come from a
Gamma renewal process with the published CV (shape 1 / CV^2; with the count fixed,
the gaps are normalised to span the window, so each window keeps its published rate
and each client its burstiness). ServeGen's own generator samples the Gamma/Weibull
it fitted per window; the moment-matched Gamma is our simpler, stated choice (the
published Weibull parameters do not reproduce the published rate and CV as scipy
reads them). `alpha` scales every client alike so the pool's mean over the chosen
span is `mean_rps`: ServeGen does not say whether its levels were rescaled for
anonymity ("trust the shapes"), and a 1,790 req/s pool is 155 M requests a day.

Sizes. Each request draws input and output lengths from its client's 6-hour
distribution (servegen_client_token_stats_6h: p50 / p90 / p99), or, for clients
without one (the heaviest clients' PDFs are missing upstream), from the pool's mix
for the window (servegen_pool_token_mix_6h). A distribution is rebuilt from its
quantiles: the log of the length is linear in the quantile between the knots
(0, 1), (0.1, p50^2 / p90), (0.5, p50), (0.9, p90), (0.99, p99), (1, p99 x sqrt(p99/p90)).
Input and output are drawn independently (the data gives no joint). mm-image:
prompt tokens = text + image tokens; deepseek-r1: output includes the reasoning.
"""

from __future__ import annotations

import lzma
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

POOLS = ("language/m-large", "language/m-mid", "language/m-small", "reason/deepseek-r1", "multimodal/mm-image")
WINDOW_S = 600.0
TOKEN_WINDOW_S = 21600.0
_Q = np.array([0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
ORIGIN = datetime(2026, 2, 2, 0, 0, tzinfo=timezone.utc)  # ServeGen's day 0 at midnight (dates unpublished)


class ServeGenError(ValueError):
    pass


def _read_csv(path: Path):
    import pandas as pd

    if not path.exists():
        raise ServeGenError(f"{path}: not found (ServeGen data in ../shared/data/traces/servegen)")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def _knots(p50, p90, p99) -> np.ndarray:
    """Log-length at the quantile knots _Q, per row (rows of p50, p90, p99)."""
    p50 = np.maximum(np.asarray(p50, dtype=float), 1.0)
    p90 = np.maximum(np.asarray(p90, dtype=float), p50)
    p99 = np.maximum(np.asarray(p99, dtype=float), p90)
    vals = np.stack([np.ones_like(p50), np.maximum(1.0, p50 ** 2 / p90), p50, p90, p99,
                     p99 * np.sqrt(p99 / p90)], axis=1)
    return np.log(np.maximum.accumulate(vals, axis=1))


def _draw(knots: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(rows.size)
    seg = np.clip(np.searchsorted(_Q, u, side="right") - 1, 0, len(_Q) - 2)
    lo, hi = knots[rows, seg], knots[rows, seg + 1]
    frac = (u - _Q[seg]) / (_Q[seg + 1] - _Q[seg])
    return np.maximum(1, np.rint(np.exp(lo + frac * (hi - lo)))).astype(np.int64)


@dataclass(frozen=True)
class ServeGenTrace:
    trace: object  # RequestTrace of the span replayed
    prior: object | None  # RequestTrace of the history before it (or None)
    alpha: float
    source: str


def servegen_trace(data_dir: str | Path, pool: str, start_day: float, days: float, mean_rps: float, seed: int = 0,
                   prior_days: float = 0.0) -> ServeGenTrace:
    """The pool's requests over [start_day, start_day + days), with `prior_days` before it as history.

    Both are scaled alike, so that the replayed span's mean is `mean_rps`.
    """
    from daemon.demand.request_log import RequestTrace

    d = Path(data_dir)
    if pool not in POOLS:
        raise ServeGenError(f"unknown ServeGen pool {pool!r}; choose from {', '.join(POOLS)}")
    cat, model = pool.split("/")
    with lzma.open(d / "servegen_client_rates_10min.csv.xz", "rt") as f:
        import pandas as pd

        rates = pd.read_csv(f, keep_default_na=False, na_values=[""])
    rates = rates[(rates.category == cat) & (rates.model == model)]
    if rates.empty:
        raise ServeGenError(f"{d}: no rates for {pool}")
    lo_s, hi_s = (start_day - prior_days) * 86400.0, (start_day + days) * 86400.0
    span_end = float(rates.window_start_s.max()) + WINDOW_S
    if lo_s < 0 or hi_s > span_end + 1e-6:
        raise ServeGenError(f"{pool}: days [{start_day - prior_days}, {start_day + days}) outside the published "
                            f"span of {span_end / 86400:.1f} days")
    rates = rates[(rates.window_start_s >= lo_s) & (rates.window_start_s < hi_s) & (rates.rate_rps > 0)]
    main = rates[rates.window_start_s >= start_day * 86400.0]
    native = float(main.rate_rps.sum()) * WINDOW_S / (days * 86400.0)
    if native <= 0:
        raise ServeGenError(f"{pool}: no requests in the chosen span")
    alpha = mean_rps / native
    rng = np.random.default_rng([seed, POOLS.index(pool)])
    lam = rates.rate_rps.to_numpy() * WINDOW_S * alpha
    n = rng.poisson(lam)
    keep = n > 0
    rates, n = rates[keep], n[keep]
    cv = np.clip(rates.cv.to_numpy(dtype=float), 0.05, 20.0)
    shape = 1.0 / cv ** 2
    # Gamma gaps per window, normalised to the window: n arrivals, n + 1 gaps.
    pair = np.repeat(np.arange(n.size), n + 1)
    gaps = rng.gamma(np.repeat(shape, n + 1), 1.0)
    ends = np.cumsum(n + 1) - 1
    first = ends - n
    # Each window's gaps as shares of their sum, summed up: positions in [0, 1) per window. (Shares,
    # not raw gaps: with a CV of 20 the gaps span hundreds of orders of magnitude.)
    sums = np.add.reduceat(gaps, first)
    share = np.divide(gaps, sums[pair], out=np.full(gaps.size, 0.0), where=sums[pair] > 0)
    share[first[sums <= 0]] = 1.0  # all gaps underflowed: the window's requests come at its start
    cs = np.cumsum(share)
    pos = cs - np.arange(n.size, dtype=float)[pair]  # the k-th window's shares start after k whole ones
    last = np.zeros(pos.size, dtype=bool)
    last[ends] = True
    pos, pair = np.clip(pos[~last], 0.0, 1.0 - 1e-9), pair[~last]
    t = rates.window_start_s.to_numpy(dtype=float)[pair] + pos * WINDOW_S

    ins, outs = _sizes(d, cat, model, rates, pair, rng)
    order = np.argsort(t, kind="stable")
    t, ins, outs = t[order], ins[order], outs[order]
    label = f"servegen({pool}, days {start_day:g}-{start_day + days:g}, mean {mean_rps:g} req/s, seed {seed})"
    cut = start_day * 86400.0

    def part(sel, src):
        tt = t[sel]
        t0 = cut if src == label else lo_s
        return RequestTrace(source=src, start=ORIGIN + _td(t0), t=tt - t0, input_tokens=ins[sel],
                            output_tokens=outs[sel])

    main_sel = t >= cut
    prior = part(~main_sel, label + " prior") if prior_days > 0 and (~main_sel).any() else None
    trace = part(main_sel, label)
    return ServeGenTrace(trace, prior, alpha, label)


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _sizes(d: Path, cat: str, model: str, rates, pair: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    with lzma.open(d / "servegen_client_token_stats_6h.csv.xz", "rt") as f:
        import pandas as pd

        cstats = pd.read_csv(f, keep_default_na=False, na_values=[""])
    cstats = cstats[(cstats.category == cat) & (cstats.model == model)]
    pstats = _read_csv(d / "servegen_pool_token_mix_6h.csv")
    pstats = pstats[(pstats.category == cat) & (pstats.model == model)]
    if pstats.empty:
        raise ServeGenError(f"{d}: no token mix for {cat}/{model}")
    fields = (("text_tokens", "image_tokens"), ("output_tokens",)) if cat == "multimodal" else \
        (("input_tokens",), ("output_tokens",))
    win6 = (rates.window_start_s.to_numpy(dtype=float) // TOKEN_WINDOW_S) * TOKEN_WINDOW_S
    client = rates.client_id.to_numpy()
    pwins = pstats.window_start_s.to_numpy(dtype=float)
    out = []
    for group in fields:
        total = np.zeros(pair.size, dtype=np.int64)
        for fld in group:
            ckey = {(int(c), float(w)): k for k, (c, w) in
                    enumerate(zip(cstats.client_id.to_numpy(), cstats.window_start_s.to_numpy(dtype=float)))}
            cknots = _knots(cstats[f"{fld}_p50"].to_numpy(dtype=float), cstats[f"{fld}_p90"].to_numpy(dtype=float),
                            cstats[f"{fld}_p99"].to_numpy(dtype=float)) if len(cstats) else np.zeros((0, len(_Q)))
            pknots = _knots(pstats[f"{fld}_p50"].to_numpy(dtype=float), pstats[f"{fld}_p90"].to_numpy(dtype=float),
                            pstats[f"{fld}_p99"].to_numpy(dtype=float))
            # per (client, window) row: its own distribution, else the pool's for the nearest 6-h window
            pidx = np.clip(np.searchsorted(pwins, win6, side="right") - 1, 0, len(pwins) - 1)
            rows_c = np.array([ckey.get((int(c), float(w)), -1) for c, w in zip(client, win6)])
            knots = np.vstack([cknots, pknots])
            row_of_pair = np.where(rows_c >= 0, rows_c, len(cknots) + pidx)
            total += _draw(knots, row_of_pair[pair], rng)
        out.append(total)
    return out[0], out[1]


def prior_windows(prior, service: str, grid, window_s: float):
    """The history trace as demand windows for `simulate(prior=...)`."""
    from daemon.demand.windows import aggregate

    if prior is None or len(prior) == 0:
        return []
    n = int(math.ceil((prior.duration_s + 1e-9) / window_s)) or 1
    return aggregate(service, grid, prior.start, window_s, prior.t, prior.input_tokens, prior.output_tokens, 0, n)
