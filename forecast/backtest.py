"""Rolling-origin evaluation, refitting as the daemon would.

Every window end in the test stretch is a forecast origin. The forecaster is
refitted on what was known at the origin every `refit_every_s` and predicts in
between from that fit (exactly the fit-on-a-schedule / predict-every-tick split
of the loop). Metrics compare the forecast for the window holding
origin + horizon with that window's observed rate; missing windows are skipped.

- MASE: mean absolute error of the median / mean absolute error of the 1-day
  seasonal-naive forecast in the pre-test history (Hyndman & Koehler 2006).
- sMAPE: mean of 2|a - f| / (|a| + |f|) (a fraction, 0..2).
- pinball: mean pinball loss of the quantile forecast at the quantile (req/s).
- coverage: share of actuals at or below the quantile forecast.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from forecast.rate import RateForecastConfig, RateForecaster, _model_step, pinball, predict
from forecast.series import DAY_S, RateSeries


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
    chosen: dict = field(default_factory=dict)  # method -> how many fits chose it
    fit_seconds_max: float = 0.0
    predict_ms_mean: float = 0.0
    predict_ms_max: float = 0.0

    def metrics(self) -> dict:
        return {"mase": self.mase, "smape": self.smape, "pinball": self.pinball, "coverage": self.coverage}


def backtest(series: RateSeries, model: str, horizon_s: float, quantile: float = 0.9, test_days: float = 3.0,
             refit_every_s: float = DAY_S, config: RateForecastConfig | None = None,
             clock: Callable[[], float] = time.perf_counter) -> BacktestResult:
    base = config or RateForecastConfig()
    cfg = replace(base, horizons_s=(horizon_s,), quantiles=(quantile,))
    step = _model_step(series.step_s, cfg)
    s = series.resample(step)
    test_start = s.end - test_days * DAY_S
    if test_start <= s.t0 + step:
        raise ValueError(f"series spans {len(s) * step / DAY_S:.2f} days: too short for a {test_days:g}-day test")
    forecaster = RateForecaster(cfg, clock=clock)
    pre = s.until(test_start)
    period = int(round(DAY_S / step))
    scale_d = np.abs(pre.values[period:] - pre.values[:-period]) if len(pre) > period else np.array([])
    scale_d = scale_d[~np.isnan(scale_d)]
    scale = float(np.mean(scale_d)) if len(scale_d) else math.nan
    # origins: ends of windows such that the target window lies in the test stretch
    origin_times = s.t0 + step * np.arange(1, len(s) + 1)
    state = None
    last_fit = -math.inf
    actual, point, qf = [], [], []
    chosen: Counter = Counter()
    fit_max = 0.0
    pms = []
    for t in origin_times:
        target_idx = math.ceil((t + horizon_s) / step - 1e-9) - 1
        j = target_idx - s.index0
        if target_idx * step < test_start or j >= len(s):
            continue
        known = s.until(t)
        if state is None or t - last_fit >= refit_every_s:
            state = forecaster.fit(known, model=model)
            last_fit = t
            chosen[state.method] += 1
            fit_max = max(fit_max, state.fit_seconds)
        a = s.values[j]
        if math.isnan(a):
            continue
        c0 = clock()
        f = predict(state, known, t, horizon_s, quantile)
        pms.append((clock() - c0) * 1000)
        actual.append(a)
        point.append(f.point)
        qf.append(f.rate)
    if not actual:
        raise ValueError("no observed window in the test stretch")
    a, p, qv = np.array(actual), np.array(point), np.array(qf)
    with np.errstate(invalid="ignore", divide="ignore"):
        sm = np.where(np.abs(a) + np.abs(p) > 0, 2 * np.abs(a - p) / (np.abs(a) + np.abs(p)), 0.0)
    return BacktestResult(
        model=model, horizon_s=horizon_s, quantile=quantile,
        mase=float(np.mean(np.abs(a - p)) / scale) if scale and scale > 0 else math.nan,
        smape=float(np.mean(sm)), pinball=pinball(a, qv, quantile), coverage=float(np.mean(a <= qv)),
        n=len(a), chosen=dict(chosen), fit_seconds_max=fit_max,
        predict_ms_mean=float(np.mean(pms)), predict_ms_max=float(np.max(pms)),
    )
