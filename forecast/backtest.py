"""Rolling-origin evaluation that cannot flatter the forecaster (issue 15).

`rolling_origin` runs the forecaster exactly as the daemon does: every window
end is a forecast origin; the fit is refreshed on a schedule (`refit_every_s`,
the daemon's default hour) from what was known at that origin only, and every
origin in between is a `predict` from the latest fit. Each origin records the
forecast of the window holding origin + horizon and, later, what it was.
Nothing here looks ahead: the forecaster only ever receives `series.until(t)`.

`naive_forecasts` is the comparison a user would run instead, written
separately from forecast.rate (the judge does not share the model it judges):
last value or the same window yesterday, with the usual empirical band, the
quantile of the method's own errors over the trailing `calibration_days`
(split conformal with a sliding window; its window was chosen on the tuning
days to suit the baseline, not the model).

`metrics` scores a record on a chosen set of days (per target window), so the
benchmark can report tuning days and held-back days apart, and per day (the
spread over origins):

- pinball: mean pinball loss of the quantile forecast at the quantile (req/s);
- coverage: share of actuals at or below the quantile forecast;
- MASE: mean absolute error of the median / `scale` (Hyndman & Koehler 2006;
  the benchmark passes the in-sample one-step naive MAE of the tuning days);
- sMAPE: mean of 2|a - f| / (|a| + |f|) (a fraction, 0..2).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import numpy as np

from forecast.rate import RateForecastConfig, RateForecaster, _model_step, predict
from forecast.series import DAY_S, RateSeries


@dataclass(frozen=True)
class Record:
    """Per-origin forecasts at one horizon (arrays aligned; NaN actual = missing target window)."""

    name: str
    horizon_s: float
    quantile: float
    origin_s: np.ndarray  # time the forecast was made (end of the last known window)
    target_start_s: np.ndarray
    actual: np.ndarray  # req/s of the target window
    point: np.ndarray  # median forecast
    upper: np.ndarray  # the quantile forecast
    method: tuple = ()  # what made each forecast
    fit_seconds: tuple = ()  # every fit/refit during the run
    predict_ms: tuple = ()  # every predict

    def day_of(self, t0: float) -> np.ndarray:
        """Day index of each target window, counted from the day holding t0."""
        d0 = math.floor(t0 / DAY_S) * DAY_S
        return np.floor((self.target_start_s - d0) / DAY_S).astype(int)


@dataclass(frozen=True)
class BacktestResult:
    model: str
    horizon_s: float
    quantile: float
    mase: float
    smape: float
    pinball: float
    coverage: float
    n: int
    chosen: dict = field(default_factory=dict)  # method -> how many forecasts it made
    fit_seconds_max: float = 0.0
    predict_ms_mean: float = 0.0
    predict_ms_max: float = 0.0

    def metrics(self) -> dict:
        return {"mase": self.mase, "smape": self.smape, "pinball": self.pinball, "coverage": self.coverage}


def rolling_origin(series: RateSeries, horizons_s: Iterable[float], quantile: float = 0.9, model: str = "auto",
                   refit_every_s: float = 3600.0, config: RateForecastConfig | None = None,
                   start_s: float | None = None, clock: Callable[[], float] = time.perf_counter) -> dict[float, Record]:
    """The forecaster run online over every window end from `start_s` (default: the first)."""
    horizons = tuple(float(h) for h in horizons_s)
    cfg = replace(config or RateForecastConfig(), horizons_s=horizons, quantiles=(quantile,))
    step = _model_step(series.step_s, cfg)
    s = series.resample(step)
    if len(s) < 2:
        raise ValueError("series too short for a rolling-origin evaluation")
    forecaster = RateForecaster(cfg, clock=clock)
    # every window end (with less than min_history_days the forecaster runs its recent-peak rule)
    first = s.t0 + step if start_s is None else max(s.t0 + step, start_s)
    rows: dict[float, list] = {h: [] for h in horizons}
    fits: list[float] = []
    pms: list[float] = []
    state = None
    last_fit = -math.inf
    for j in range(len(s)):
        t = s.t0 + (j + 1) * step  # the end of window j: windows 0..j are known
        if t < first - 1e-9:
            continue
        if all(math.ceil((t + h) / step - 1e-9) - 1 - s.index0 >= len(s) for h in horizons):
            break  # no target left inside the series
        known = s.until(t)
        if state is None or t - last_fit >= refit_every_s - 1e-9 or (state.method == "recent_peak" and not state.tracks
                                                                     and t - last_fit >= refit_every_s):
            state = forecaster.fit(known, model=model, previous=state)
            last_fit = t
            fits.append(state.fit_seconds)
        for h in horizons:
            target = math.ceil((t + h) / step - 1e-9) - 1
            jj = target - s.index0
            if jj >= len(s):
                continue
            c0 = clock()
            f = predict(state, known, t, h, quantile)
            pms.append((clock() - c0) * 1000)
            rows[h].append((t, target * step, s.values[jj], f.point, f.rate, f.method))
    out = {}
    for h, r in rows.items():
        if not r:
            raise ValueError(f"no origin with a target inside the series for horizon {h:g}s")
        a = list(zip(*r))
        out[h] = Record(model, h, quantile, np.array(a[0]), np.array(a[1]), np.array(a[2], float), np.array(a[3], float),
                        np.array(a[4], float), tuple(a[5]), tuple(fits), tuple(pms))
    return out


def naive_forecasts(series: RateSeries, horizon_s: float, quantile: float, kind: str,
                    calibration_days: float = 1.0, offset_frac: float = 0.05, step_s: float | None = None,
                    start_s: float | None = None) -> Record:
    """Last value ("last_value") or yesterday's window ("seasonal_naive"), with a trailing empirical band.

    The band is the `quantile` of the method's own log errors over the origins of
    the last `calibration_days` whose targets are already known (at least 20).
    """
    if kind not in ("last_value", "seasonal_naive"):
        raise ValueError(f"kind must be last_value or seasonal_naive, got {kind!r}")
    step = step_s or _model_step(series.step_s, RateForecastConfig())
    s = series.resample(step)
    v = s.values
    n = len(v)
    pos = v[~np.isnan(v) & (v > 0)]
    c = max(1e-6, offset_frac * float(np.median(pos))) if len(pos) else 1e-3
    z = np.log(np.maximum(v, 0) + c)
    period = int(round(DAY_S / step))
    k = max(1, math.ceil(horizon_s / step - 1e-9))
    # point forecast of z[o + k] from z[:o + 1]
    last = np.full(n, np.nan)
    cur = np.nan
    for i in range(n):
        if not math.isnan(z[i]):
            cur = z[i]
        last[i] = cur
    point = last.copy()
    if kind == "seasonal_naive":
        for o in range(n):
            for back in (1, 2, 7):  # the day before; if that was a gap, two days / a week before
                jj = o + k - back * period
                if 0 <= jj <= o and not math.isnan(z[jj]):
                    point[o] = z[jj]
                    break
    err = np.full(n, np.nan)
    err[: n - k] = z[k:] - point[: n - k]
    w = max(20, int(round(calibration_days * period)))
    first = s.t0 + 2 * DAY_S if start_s is None else start_s
    rows = []
    for o in range(n - k):
        t = s.t0 + (o + 1) * step
        if t < first - 1e-9:
            continue
        e = err[max(0, o - k - w + 1) : o - k + 1]  # origins whose target (<= o) is known at o
        e = e[~np.isnan(e)]
        if len(e) < 20 or math.isnan(point[o]):
            continue
        zq = point[o] + float(np.quantile(e, quantile))
        zm = point[o] + float(np.quantile(e, 0.5))
        rows.append((t, (s.index0 + o + k) * step, v[o + k], max(0.0, math.exp(zm) - c), max(0.0, math.exp(zq) - c)))
    if not rows:
        raise ValueError("series too short for the naive baseline")
    a = list(zip(*rows))
    return Record(kind, horizon_s, quantile, np.array(a[0]), np.array(a[1]), np.array(a[2], float),
                  np.array(a[3], float), np.array(a[4], float), (kind,) * len(rows))


def metrics(rec: Record, mask: np.ndarray | None = None, scale: float = math.nan) -> dict:
    """pinball, coverage, MASE (with `scale`), sMAPE and n over the records in `mask` with an observed target."""
    ok = ~np.isnan(rec.actual) & ~np.isnan(rec.upper) & ~np.isnan(rec.point)
    if mask is not None:
        ok &= mask
    a, p, u = rec.actual[ok], rec.point[ok], rec.upper[ok]
    if len(a) == 0:
        return {"pinball": math.nan, "coverage": math.nan, "mase": math.nan, "smape": math.nan, "n": 0}
    q = rec.quantile
    d = a - u
    with np.errstate(invalid="ignore", divide="ignore"):
        sm = np.where(np.abs(a) + np.abs(p) > 0, 2 * np.abs(a - p) / (np.abs(a) + np.abs(p)), 0.0)
    return {
        "pinball": float(np.mean(np.maximum(q * d, (q - 1) * d))),
        "coverage": float(np.mean(a <= u)),
        "mase": float(np.mean(np.abs(a - p)) / scale) if scale and scale > 0 else math.nan,
        "smape": float(np.mean(sm)),
        "n": int(len(a)),
    }


def one_step_scale(series: RateSeries, until_s: float) -> float:
    """In-sample MAE of the one-step naive forecast before `until_s` (the MASE denominator)."""
    v = series.until(until_s).values
    d = np.abs(np.diff(v))
    d = d[~np.isnan(d)]
    return float(np.mean(d)) if len(d) else math.nan


def backtest(series: RateSeries, model: str, horizon_s: float, quantile: float = 0.9, test_days: float = 3.0,
             refit_every_s: float = 3600.0, config: RateForecastConfig | None = None,
             clock: Callable[[], float] = time.perf_counter) -> BacktestResult:
    """One model at one horizon, scored on the last `test_days` (the CLI's `forecast backtest`).

    The forecaster runs online from two days before the test stretch (its record
    needs that long to fill), so the test days are scored exactly as they would
    have been forecast live.
    """
    cfg = config or RateForecastConfig()
    step = _model_step(series.step_s, cfg)
    s = series.resample(step)
    test_start = s.end - test_days * DAY_S
    if test_start <= s.t0 + step:
        raise ValueError(f"series spans {len(s) * step / DAY_S:.2f} days: too short for a {test_days:g}-day test")
    warm = max(s.t0 + step, test_start - 2 * DAY_S)
    rec = rolling_origin(s, (horizon_s,), quantile, model, refit_every_s, cfg, start_s=warm, clock=clock)[float(horizon_s)]
    mask = rec.target_start_s >= test_start - 1e-9
    m = metrics(rec, mask, one_step_scale(s, test_start))
    if m["n"] == 0:
        raise ValueError("no observed window in the test stretch")
    chosen = Counter(np.array(rec.method, dtype=object)[mask].tolist())
    pms = rec.predict_ms or (0.0,)
    return BacktestResult(model, horizon_s, quantile, m["mase"], m["smape"], m["pinball"], m["coverage"], m["n"],
                          dict(chosen), max(rec.fit_seconds, default=0.0), float(np.mean(pms)), float(np.max(pms)))
