"""Request-rate forecasting for the planner: a quantile of the rate at a horizon.

Two halves, as the loop needs them:

- `RateForecaster.fit(history)` (expensive; run on a schedule, e.g. hourly, in a
  worker, never inside a tick): fits every candidate of `forecast.models` on all
  but the last `validation_days` of history, runs a rolling-origin backtest over
  that last stretch, keeps the candidate with the lowest pinball loss at the
  planning quantile, and keeps its out-of-sample errors per horizon for
  calibration. Candidates are tried cheap-first; once `budget_s` is spent the
  rest are skipped (recorded as such), so a refit never runs away.
- `predict(state, history, now, horizon_s, quantile)` (cheap, pure; every tick):
  the chosen model's point forecast from the latest windows, plus the empirical
  quantile of its own out-of-sample errors at that horizon (split-conformal
  calibration, Vovk et al.; for the quantile-regression candidate its direct
  quantile, corrected the same way: conformalized quantile regression, Romano et
  al. 2019). Empirical errors rather than the models' Gaussian intervals because
  production rates have heavy tails (a dominant client switching off) that
  Gaussian intervals under-cover.

Everything is in log(rate + c): errors are relative, so one calibration serves
both the 3 a.m. trough and the noon peak. Missing windows are NaN throughout.
History shorter than `min_history_days` falls back to a robust recent-peak
rule; a level shift (the last few windows all far outside the calibrated band)
lifts the forecast to at least that rule and flags `needs_refit`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

import numpy as np

from forecast.models import BASELINES, CANDIDATES, FitContext
from forecast.series import DAY_S, WEEK_S, RateSeries, series_from_windows, to_epoch

# cheap first: under a tight budget the baselines and the fast models are always scored
DEFAULT_CANDIDATES = ("last_value", "seasonal_naive", "quantile_regression", "holt_winters", "mstl_arima",
                      "sarimax_fourier", "ensemble")


@dataclass(frozen=True)
class RateForecastConfig:
    step_s: float | None = None  # model grid; None = max(native window, 300 s)
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    validation_days: float = 1.0  # the stretch the rolling-origin selection and the calibration use
    max_origins: int = 144  # forecast origins per candidate in that stretch (evenly spaced)
    budget_s: float = 5.0  # wall time one fit may take; later candidates are skipped after it
    horizons_s: tuple[float, ...] = (360.0,)  # horizons predict will be asked for (others: nearest calibrated)
    quantiles: tuple[float, ...] = (0.9,)  # the first one scores the selection
    min_history_days: float = 2.0  # less observed history: the recent-peak rule
    peak_window_s: float = 3600.0  # recent-peak rule: look back this far
    offset_frac: float = 0.05  # c in log(rate + c), as a fraction of the median rate (zero-rate windows stay finite)


@dataclass(frozen=True)
class FittedRate:
    """The state `predict` needs; built by `RateForecaster.fit`. Nothing in it is a live connection."""

    method: str  # chosen candidate, or "recent_peak"
    params: object = field(repr=False)
    step_s: float
    offset: float
    fit_end: int  # absolute grid index one past the last window the fit saw
    errors: dict = field(repr=False, default_factory=dict)  # k -> out-of-sample log errors of the point forecast
    direct_errors: dict = field(repr=False, default_factory=dict)  # (k, q) -> errors of the direct quantile
    scores: dict = field(default_factory=dict)  # candidate -> {"pinball", "fit_s", "status"}
    fit_seconds: float = 0.0
    config: RateForecastConfig = RateForecastConfig()
    notes: tuple[str, ...] = ()
    calib_vol: float = 0.0  # mean |change| of log rate per window over the calibration stretch


@dataclass(frozen=True)
class RateQuantile:
    """The forecast of the mean rate over the window that contains now + horizon."""

    rate: float  # the requested quantile (req/s): what the planner sizes for
    point: float  # median
    lo: float  # the (1 - quantile) quantile: with `rate`, a central prediction interval
    quantile: float
    horizon_s: float
    target_start: float  # epoch of the target window
    method: str
    level_shift: bool = False
    needs_refit: bool = False
    details: dict = field(default_factory=dict, compare=False)


def _model_step(native: float, config: RateForecastConfig) -> float:
    if config.step_s is not None:
        return float(config.step_s)
    if native >= 300:
        return native
    k = math.ceil(300 / native)
    return native * k


def _to_series(history: RateSeries | Iterable) -> RateSeries:
    return history if isinstance(history, RateSeries) else series_from_windows(history)


def _log(rates: np.ndarray, c: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.log(np.maximum(rates, 0.0) + c)


def _unlog(z: float, c: float) -> float:
    return max(0.0, math.exp(z) - c)


def pinball(actual: np.ndarray, forecast: np.ndarray, q: float) -> float:
    d = np.asarray(actual, float) - np.asarray(forecast, float)
    return float(np.mean(np.maximum(q * d, (q - 1) * d)))


def recent_peak(series: RateSeries, now: float, quantile: float, window_s: float) -> tuple[float, float]:
    """(quantile-ish forecast, median) from the last `window_s` of observed windows.

    A rolling median of three removes single-window spikes before taking the
    peak, so one burst does not hold the fleet up for an hour; with quantile q
    the rule is the q-quantile of those smoothed values, but never below the
    latest smoothed value (a rising ramp keeps the newest level).
    """
    s = series.until(now)
    n = max(1, int(round(window_s / s.step_s)))
    v = s.values[-n:] if len(s) else np.array([])
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return 0.0, 0.0
    if len(v) >= 3:
        sm = np.array([np.median(v[max(0, i - 2) : i + 1]) for i in range(2, len(v))])
    else:
        sm = v
    peak = max(float(np.quantile(sm, quantile)), float(sm[-1]))
    return peak, float(np.median(v[-3:]))


class RateForecaster:
    """Fits per-series models within a time budget; `predict` (module level) uses the result."""

    def __init__(self, config: RateForecastConfig | None = None, clock: Callable[[], float] = time.perf_counter):
        self.config = config or RateForecastConfig()
        self.clock = clock  # measures the budget only; forecasts never read a clock

    def refit(self, state: FittedRate, history: RateSeries | Iterable) -> FittedRate:
        """The scheduled refit: the model `state` chose (an ensemble: its members), re-estimated and recalibrated.

        Much cheaper than `fit(model="auto")`, which the daemon runs less often (e.g. daily) to re-select.
        """
        if state.method == "recent_peak":
            return self.fit(history)
        if state.method == "ensemble":
            return self.fit(history, model="ensemble", members=tuple(n for n, _ in state.params.members))
        return self.fit(history, model=state.method)

    def fit(self, history: RateSeries | Iterable, model: str = "auto", members: tuple[str, ...] | None = None) -> FittedRate:
        """Select (model="auto") or fit one candidate; `members` restricts an ensemble's candidates."""
        cfg = self.config
        t_start = self.clock()
        series = _to_series(history)
        step = _model_step(series.step_s, cfg)
        series = series.resample(step)
        obs = series.values[~np.isnan(series.values)]
        pos = obs[obs > 0]
        offset = max(1e-6, cfg.offset_frac * float(np.median(pos))) if len(pos) else 1e-3
        fit_end = series.index0 + len(series)
        if model != "auto" and model not in CANDIDATES:
            raise ValueError(f"unknown model {model!r}; choose auto or one of {', '.join(CANDIDATES)}")
        period = int(round(DAY_S / step))
        observed_days = len(obs) * step / DAY_S
        if observed_days < cfg.min_history_days:
            return FittedRate("recent_peak", None, step, offset, fit_end, config=cfg,
                              fit_seconds=self.clock() - t_start,
                              notes=(f"{observed_days:.2f} days observed < {cfg.min_history_days}: recent-peak rule",))
        z = _log(series.values, offset)
        n = len(z)
        # a tick between window ends asks for one step further: calibrate both
        ks = sorted({1} | {max(1, math.ceil(h / step - 1e-9)) + d for h in cfg.horizons_s for d in (0, 1)})
        ctx = FitContext(period=period, week=int(round(WEEK_S / step)), ks=tuple(ks), quantiles=tuple(cfg.quantiles))
        v = int(round(cfg.validation_days * period))
        v = max(1, min(v, n - period))
        n_train = n - v
        i0 = series.index0
        q_main = cfg.quantiles[0]
        if model == "auto":
            names = cfg.candidates
        elif model == "ensemble":
            names = members or tuple(c for c in cfg.candidates if c not in BASELINES)
        else:
            names = (model,)
        scores: dict[str, dict] = {}
        fitted: dict[str, tuple] = {}
        for name in names:
            if name == "ensemble":
                continue
            cand = CANDIDATES[name]
            if self.clock() - t_start > cfg.budget_s and fitted:
                scores[name] = {"status": "skipped: time budget spent"}
                continue
            train_start = max(0, n_train - int(round(cand.train_days * period)))
            if (n_train - train_start) < cand.min_days * period:
                scores[name] = {"status": f"skipped: needs {cand.min_days:g} days before the validation day"}
                continue
            t0 = self.clock()
            try:
                params = cand.fit(z[train_start:n_train], i0 + train_start, ctx)
                fit_s = self.clock() - t0
                errs, derrs = _validation_errors(cand, params, z, i0, n_train, ks, cfg.quantiles, cfg.max_origins, period)
            except Exception as e:  # a candidate that cannot fit this series is out, the others go on
                scores[name] = {"status": f"failed: {type(e).__name__}: {e}"}
                continue
            score = _score(errs, derrs, ks, q_main)
            scores[name] = {"status": "ok", "pinball_log": score, "fit_s": round(fit_s, 3),
                            "origins": int(max((len(e) for e in errs.values()), default=0))}
            fitted[name] = (params, errs, derrs, score)
        if model == "ensemble" or (model == "auto" and "ensemble" in cfg.candidates):
            ens = _ensemble(fitted, ks, q_main)
            if ens is not None:
                fitted["ensemble"] = ens
                scores["ensemble"] = {"status": "ok", "pinball_log": ens[3],
                                      "members": [m for m, _ in ens[0].members]}
            else:
                scores["ensemble"] = {"status": "skipped: fewer than two fitted models"}
            if model == "ensemble":
                fitted = {k: v for k, v in fitted.items() if k == "ensemble"}
        if not fitted:
            return FittedRate("recent_peak", None, step, offset, fit_end, scores=scores, config=cfg,
                              fit_seconds=self.clock() - t_start, notes=("no candidate could be fitted",))
        chosen = min(fitted, key=lambda k: fitted[k][3])
        params, errs, derrs, _ = fitted[chosen]
        return FittedRate(chosen, params, step, offset, i0 + n_train, errs, derrs, scores,
                          fit_seconds=self.clock() - t_start, config=cfg, calib_vol=_volatility(z[n_train - 1 :]))


def _validation_errors(cand, params, z, i0, n_train, ks, quantiles, max_origins, period):
    n = len(z)
    last_origin = n - 2  # the last origin with at least one window after it
    origins = np.arange(n_train - 1, last_origin + 1)
    if len(origins) > max_origins:
        origins = origins[np.round(np.linspace(0, len(origins) - 1, max_origins)).astype(int)]
    start = max(0, n_train - 4 * period - 2)
    errs: dict[int, list] = {k: [] for k in ks}
    derrs: dict[tuple, list] = {}
    for o in origins:
        hist = z[start : o + 1]
        want = [k for k in ks if o + k < n and not math.isnan(z[o + k])]
        if not want:
            continue
        pts = cand.points(params, hist, i0 + start, want)
        for k in want:
            errs[k].append(z[o + k] - pts[k])
            for q in quantiles:
                d = cand.direct_quantile(params, hist, i0 + start, k, q)
                if d is not None:
                    derrs.setdefault((k, q), []).append(z[o + k] - d)
    # in origin order (not sorted): the ensemble averages members' errors origin by origin
    return ({k: np.array(e) for k, e in errs.items() if e}, {kq: np.array(e) for kq, e in derrs.items()})


def _ensemble(fitted: dict, ks, q, size: int = 3):
    """The mean of the best `size` non-baseline members (by validation score); None if < 2."""
    from forecast.models import EnsembleParams

    ranked = sorted((n for n in fitted if n not in BASELINES), key=lambda n: fitted[n][3])[:size]
    if len(ranked) < 2:
        return None
    errs = {}
    for k in ks:
        arrs = [fitted[n][1].get(k) for n in ranked]
        if any(a is None for a in arrs) or len({len(a) for a in arrs}) != 1:
            return None
        errs[k] = np.mean(arrs, axis=0)
    params = EnsembleParams(tuple((n, fitted[n][0]) for n in ranked))
    return params, errs, {}, _score(errs, {}, ks, q)


def _score(errs, derrs, ks, q) -> float:
    """Mean over horizons of the pinball loss of the calibrated quantile (log scale)."""
    out = []
    for k in ks:
        if (k, q) in derrs:
            e = derrs[(k, q)]
        elif k in errs:
            e = errs[k]
        else:
            return math.inf
        out.append(pinball(e, np.full(len(e), np.quantile(e, q)), q))
    return float(np.mean(out))


VOL_WINDOWS = 24  # recent windows the volatility adjustment looks at
VOL_POWER = 0.5  # how strongly the band follows the volatility ratio (1 = proportionally)


def _volatility(z: np.ndarray) -> float:
    d = np.abs(np.diff(z))
    d = d[~np.isnan(d)]
    return float(np.mean(d)) if len(d) else 0.0


def _vol_factor(state: "FittedRate", z: np.ndarray) -> float:
    """sqrt(recent volatility / calibration-day volatility), clipped to [0.5, 3].

    The calibrated errors come from one day; the next day can be calmer or far
    wilder (ServeGen m-small: mean |change| per window 0.03 on day 8, 0.15 on
    day 9). Widening the band with the square root of the ratio kept p90 coverage
    near 0.9 on all three pools in an offline check, where the full ratio
    over-widened and no adjustment under-covered the wild day.
    """
    if state.calib_vol <= 0:
        return 1.0
    recent = _volatility(z[-(VOL_WINDOWS + 1) :])
    if recent <= 0:
        return 1.0
    return float(np.clip((recent / state.calib_vol) ** VOL_POWER, 0.5, 3.0))


def _errors_for(store: dict, k: int):
    if not store:
        return None, k
    if k in store:
        return store[k], k
    keys = sorted(store)
    kk = min(keys, key=lambda x: abs(x - k))
    e = store[kk]
    if k > kk:  # beyond the calibrated horizon: widen like a random walk
        e = e * math.sqrt(k / kk)
    return e, kk


def predict(state: FittedRate, history: RateSeries | Iterable, now: datetime | float, horizon_s: float,
            quantile: float) -> RateQuantile:
    """The `quantile` of the mean rate over the window holding now + horizon_s. Pure and cheap."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    now_s = to_epoch(now)
    series = _to_series(history).resample(state.step_s).until(now_s)
    step = state.step_s
    cfg = state.config
    # the window that holds the instant just before now + horizon (at a window boundary: h/step steps ahead)
    target_idx = math.ceil((now_s + horizon_s) / step - 1e-9) - 1
    target_start = target_idx * step
    if len(series) == 0 or series.observed() == 0:
        return RateQuantile(0.0, 0.0, 0.0, quantile, horizon_s, target_start, "no_data", details={"reason": "no observed window"})
    last_idx = series.index0 + len(series) - 1
    k = max(1, target_idx - last_idx)
    peak, median = recent_peak(series, now_s, quantile, cfg.peak_window_s)
    if state.method == "recent_peak":
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            details={"notes": list(state.notes)})
    cand = CANDIDATES[state.method]
    period = int(round(DAY_S / step))
    c = state.offset
    # the model needs: the state's end (Holt-Winters runs on from there) and three days of lags
    want_start = min(state.fit_end - 1, last_idx - 3 * period - 8)  # + the level-shift check's windows
    start = max(series.index0, want_start)
    tail = series.values[start - series.index0 :]
    if start > state.fit_end:
        # history no longer reaches the fit (the caller trimmed it): only the baselines can go on
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            needs_refit=True, details={"reason": "history does not reach back to the last fit"})
    z = _log(tail, c)
    m = 3
    check = len(z) - m > state.fit_end - start  # the shift check looks only at windows after the fit
    try:
        pt, recent = cand.point_and_recent(state.params, z, start, k, m if check else 0)
    except ValueError as e:  # too little history passed for this model: the rule, and ask for a refit
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            needs_refit=True, details={"reason": f"{state.method}: {e}"})
    errs, k_cal = _errors_for(state.errors, k)
    direct = cand.direct_quantile(state.params, z, start, k, quantile) if (k, quantile) in state.direct_errors else None
    if direct is not None:
        zq = direct + float(np.quantile(state.direct_errors[(k, quantile)], quantile))
    else:
        zq = pt + float(np.quantile(errs, quantile))
    zlo = pt + float(np.quantile(errs, 1 - quantile))
    zmed = pt + float(np.quantile(errs, 0.5))
    vf = _vol_factor(state, z)
    zq, zlo = zmed + (zq - zmed) * vf, zmed + (zlo - zmed) * vf
    rate, point, lo = _unlog(zq, c), _unlog(zmed, c), _unlog(zlo, c)
    shift = _level_shift(state, z[len(z) - m :], recent) if check else None
    details = {"k_steps": k, "calibrated_k": k_cal, "step_s": step, "volatility_factor": round(vf, 3)}
    if shift:
        details["level_shift"] = shift
        if shift == "up" and peak > rate:
            details["raised_to_recent_peak"] = True
            rate = peak
    return RateQuantile(rate, point, min(lo, point), quantile, horizon_s, target_start, state.method,
                        level_shift=bool(shift), needs_refit=bool(shift), details=details)


def _level_shift(state: FittedRate, actual: np.ndarray, one_step: np.ndarray) -> str | None:
    """"up"/"down" when the last few windows all fell outside the 97.5% one-step band.

    A single burst is not a shift; three windows in a row on one side of a band
    that should hold 95% of them is (chance: about 1 in 60,000 per check).
    """
    e1 = state.errors.get(1)
    if e1 is None or len(e1) < 20 or len(one_step) == 0 or np.isnan(actual).any():
        return None
    hi, lo = float(np.quantile(e1, 0.975)), float(np.quantile(e1, 0.025))
    e = actual - one_step
    if np.all(e > hi):
        return "up"
    if np.all(e < lo):
        return "down"
    return None
