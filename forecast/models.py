"""Rate forecasting candidates, each split into an expensive fit and a cheap point forecast.

All candidates work on z = log(rate + c) on a regular grid (see `forecast.rate`):
request rates are multiplicative (a quiet hour is a scaled-down busy hour), and
in log space a level shift is an additive step that local-level models absorb
in one update. Missing windows are NaN.

The split mirrors the daemon: `fit(z, i0, ctx)` estimates parameters (run on a
schedule, within a time budget); `point(params, z, i0, k)` is the forecast k
steps after the end of `z` and runs every tick. `point` folds in the windows
observed since the fit with the fitted parameters held fixed (a filter pass,
not an estimation), so a model fitted an hour ago still starts from the latest
level. Both are pure functions of their arguments.

`i0` is the absolute grid index (epoch / step) of z[0]; the season phase of
index i is i mod period, so phases are aligned to UTC whatever the history's start.

`points_at(params, z, i0, origins, k)` gives the forecasts that origins
(positions in z: the last window known) made for k windows later, all at once;
the online calibration (forecast.rate) replays the origins since the last fit
with it. The cheap candidates (last value, seasonal naive, robust regression)
vectorize it; the statsmodels state-space ones loop over origins.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FitContext:
    """What every candidate needs to know about the grid and the forecasts it will be asked for."""

    period: int  # steps per day
    week: int  # steps per week
    ks: tuple[int, ...] = (1,)  # horizons (in steps) forecasts will be asked for
    quantiles: tuple[float, ...] = (0.9,)


def fill_gaps(z: np.ndarray, period: int) -> np.ndarray:
    """A gap-free copy for estimators that cannot skip NaN (Holt-Winters, MSTL).

    A missing window takes the value one day earlier (else one day later): a
    collection gap at 14:00 looks like 14:00, not like the average of its
    neighbours. What is left is interpolated linearly. Only for fitting: the
    errors that select and calibrate models are measured on observed windows only.
    """
    out = np.array(z, dtype=float)
    n = len(out)
    miss = np.isnan(out)
    if not miss.any():
        return out
    for i in np.flatnonzero(miss):
        for j in (i - period, i + period, i - 2 * period, i + 2 * period):
            if 0 <= j < n and not miss[j]:
                out[i] = z[j]
                break
    rest = np.isnan(out)
    if rest.all():
        raise ValueError("no observed value to fill gaps from")
    if rest.any():
        idx = np.arange(n)
        out[rest] = np.interp(idx[rest], idx[~rest], out[~rest])
    return out


def last_observed(z: np.ndarray) -> float:
    ok = np.flatnonzero(~np.isnan(z))
    if len(ok) == 0:
        raise ValueError("no observed window")
    return float(z[ok[-1]])


def _phase_profile(component: np.ndarray, i0: int, period: int, periods_back: int) -> np.ndarray:
    """Mean of a seasonal component over its last `periods_back` periods, indexed by phase."""
    n = len(component)
    m = min(n // period, periods_back) * period
    if m == 0:
        return np.zeros(period)
    tail = component[n - m :]
    phases = (i0 + n - m + np.arange(m)) % period
    prof = np.zeros(period)
    cnt = np.zeros(period)
    np.add.at(prof, phases, tail)
    np.add.at(cnt, phases, 1)
    return np.where(cnt > 0, prof / np.maximum(cnt, 1), 0.0)


class Candidate:
    name: str = ""
    min_days: float = 2.0  # history needed to fit
    train_days: float = 14.0  # the fit reads at most this much (older data says little about now)
    history_days: float = 3.2  # history `point` reads at predict time (forecast.rate keeps this much)
    cheap: bool = False  # fit + replay in milliseconds: refitted at every scheduled refit
    description: str = ""

    def points_at(self, params, z: np.ndarray, i0: int, origins: np.ndarray, k: int) -> np.ndarray:
        """Forecasts of z[o + k] made from z[: o + 1], for each origin position o."""
        return np.array([self.point(params, z[: o + 1], i0, k) for o in np.asarray(origins, dtype=int)], dtype=float)

    def fit(self, z: np.ndarray, i0: int, ctx: FitContext):
        raise NotImplementedError

    def point(self, params, z: np.ndarray, i0: int, k: int) -> float:
        raise NotImplementedError

    def points(self, params, z: np.ndarray, i0: int, ks) -> dict[int, float]:
        """Point forecasts for several horizons from one origin (models override to share the work)."""
        return {k: self.point(params, z, i0, k) for k in ks}

    def point_and_recent(self, params, z: np.ndarray, i0: int, k: int, m: int) -> tuple[float, np.ndarray]:
        """The point forecast plus the one-step forecasts that were due for the last m windows.

        The level-shift check needs the latter; state-space models get both from one filter pass.
        """
        n = len(z)
        recent = np.array([self.point(params, z[:j], i0, 1) for j in range(n - m, n)]) if m else np.array([])
        return self.point(params, z, i0, k), recent

    def direct_quantile(self, params, z: np.ndarray, i0: int, k: int, q: float) -> float | None:
        """A quantile the model predicts itself (None: the caller adds calibrated errors to `point`)."""
        return None


def forward_fill(z: np.ndarray) -> np.ndarray:
    """out[i] = the last observed value at or before i (NaN before the first observation)."""
    z = np.asarray(z, dtype=float)
    idx = np.where(~np.isnan(z), np.arange(len(z)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, z[np.maximum(idx, 0)], np.nan)
    return out


class LastValue(Candidate):
    name = "last_value"
    min_days = 0.0
    history_days = 0.1
    cheap = True
    description = "the last observed window, persisted"

    def fit(self, z, i0, ctx):
        return None

    def point(self, params, z, i0, k):
        return last_observed(z)

    def points_at(self, params, z, i0, origins, k):
        return forward_fill(z)[np.asarray(origins, dtype=int)]


class SeasonalNaive(Candidate):
    name = "seasonal_naive"
    min_days = 1.0
    history_days = 7.2
    cheap = True
    description = "the same window one day earlier"

    def points_at(self, params, z, i0, origins, k):
        period = params
        o = np.asarray(origins, dtype=int)
        out = forward_fill(z)[o]  # last resort, as `point`
        done = np.zeros(len(o), dtype=bool)
        for back in (1, 2, 7):
            j = o + k - back * period
            ok = ~done & (j >= 0) & (j <= o)
            val = np.where(ok, z[np.clip(j, 0, len(z) - 1)], np.nan)
            use = ok & ~np.isnan(val)
            out = np.where(use, val, out)
            done |= use
        return out

    def fit(self, z, i0, ctx):
        return ctx.period

    def point(self, params, z, i0, k):
        period = params
        n = len(z)
        for back in (1, 2, 7):  # the day before; if that was a gap, two days / a week before
            j = n - 1 + k - back * period
            if 0 <= j < n and not math.isnan(z[j]):
                return float(z[j])
        return last_observed(z)


@dataclass(frozen=True)
class HWParams:
    alpha: float
    beta: float
    gamma: float
    phi: float
    level: float
    trend: float
    season: np.ndarray = field(repr=False)  # indexed by phase
    end: int  # absolute index one past the last window the state has absorbed


def hw_update(p: HWParams, z: np.ndarray, i0: int, period: int) -> tuple[float, float, np.ndarray]:
    """Run the additive damped Holt-Winters recursion over z[p.end - i0:] with fixed parameters.

    Same equations as statsmodels' ExponentialSmoothing (Hyndman & Athanasopoulos,
    FPP3 §8.3, damped additive form); a missing window updates nothing but
    the damped trend (its one-step forecast stands in for it).
    """
    level, trend = p.level, p.trend
    season = p.season.copy()
    start = p.end - i0
    if start < 0:
        raise ValueError("history does not reach back to the end of the fit")
    a, b, g, phi = p.alpha, p.beta, p.gamma, p.phi
    for j in range(start, len(z)):
        ph = (i0 + j) % period
        y = z[j]
        prev_level = level
        base = level + phi * trend
        if math.isnan(y):
            level = base
            trend = phi * trend
            continue
        s = season[ph]
        level = a * (y - s) + (1 - a) * base
        trend = b * (level - prev_level) + (1 - b) * phi * trend
        season[ph] = g * (y - base) + (1 - g) * s
    return level, trend, season


class HoltWinters(Candidate):
    name = "holt_winters"
    min_days = 2.0
    train_days = 7.0
    description = "additive damped Holt-Winters (ETS A,Ad,A) on log rate, daily season (statsmodels)"

    def fit(self, z, i0, ctx):
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        y = fill_gaps(z, ctx.period)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ExponentialSmoothing(
                y, trend="add", damped_trend=True, seasonal="add", seasonal_periods=ctx.period,
                initialization_method="estimated",
            ).fit()
        prm = res.params
        n = len(y)
        season = np.zeros(ctx.period)
        # res.season[t] is the seasonal state for the window t; the last period of them covers every phase
        seas = np.asarray(res.season)[n - ctx.period :]
        season[(i0 + n - ctx.period + np.arange(ctx.period)) % ctx.period] = seas
        return HWParams(
            alpha=float(prm["smoothing_level"]), beta=float(prm["smoothing_trend"]),
            gamma=float(prm["smoothing_seasonal"]), phi=float(prm["damping_trend"]),
            level=float(np.asarray(res.level)[-1]), trend=float(np.asarray(res.trend)[-1]),
            season=season, end=i0 + n,
        )

    def point(self, params: HWParams, z, i0, k):
        return self.points(params, z, i0, (k,))[k]

    def points(self, params: HWParams, z, i0, ks):
        period = len(params.season)
        level, trend, season = hw_update(params, z, i0, period)
        phi = params.phi
        out = {}
        for k in ks:
            damp = sum(phi**h for h in range(1, k + 1))
            out[k] = float(level + damp * trend + season[(i0 + len(z) - 1 + k) % period])
        return out


class _PathCandidate(Candidate):
    """A model whose `_run(params, z, i0, k, m)` gives the k-step path and m recent one-step forecasts."""

    def _run(self, params, z, i0, k, m):  # pragma: no cover - each subclass defines it
        raise NotImplementedError

    def point(self, params, z, i0, k):
        return float(self._run(params, z, i0, k, 0)[0][-1])

    def points(self, params, z, i0, ks):
        path = self._run(params, z, i0, max(ks), 0)[0]
        return {k: float(path[k - 1]) for k in ks}

    def point_and_recent(self, params, z, i0, k, m):
        path, recent = self._run(params, z, i0, k, m)
        return float(path[-1]), recent


@dataclass(frozen=True)
class ArimaOnAdjusted:
    profile: np.ndarray = field(repr=False)  # seasonal profile (daily + weekly) by weekly phase
    order: tuple[int, int, int]
    params: np.ndarray = field(repr=False)
    window: int  # how many recent windows the per-tick filter reads


class MstlArima(_PathCandidate):
    name = "mstl_arima"
    min_days = 2.0
    train_days = 21.0
    description = "MSTL (daily + weekly when >= 2 weeks) seasonal profile; ARIMA(1,1,1) on the adjusted log rate"
    order = (1, 1, 1)

    def fit(self, z, i0, ctx):
        from statsmodels.tsa.seasonal import MSTL
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        y = fill_gaps(z, ctx.period)
        n = len(y)
        weekly = n >= 2 * ctx.week
        periods = (ctx.period, ctx.week) if weekly else (ctx.period,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = MSTL(y, periods=periods).fit()
        seas = np.asarray(res.seasonal).reshape(n, -1)
        span = ctx.week  # the profile is indexed by phase of week; a daily-only profile repeats
        profile = np.zeros(span)
        daily = _phase_profile(seas[:, 0], i0, ctx.period, periods_back=3)
        ph = np.arange(span)
        profile += daily[ph % ctx.period]
        if weekly:
            profile += _phase_profile(seas[:, 1], i0, ctx.week, periods_back=1)
        adj = z - profile[(i0 + np.arange(n)) % span]
        train = adj[-min(n, 4 * ctx.period) :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = SARIMAX(train, order=self.order, initialization="approximate_diffuse").fit(disp=False, maxiter=50, cov_type="none")
        return ArimaOnAdjusted(profile, self.order, np.asarray(fitted.params), window=max(48, ctx.period // 3))

    def _run(self, params: ArimaOnAdjusted, z, i0, k, m):
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        span = len(params.profile)
        n = len(z)
        w = min(n, params.window)
        idx = i0 + n - w + np.arange(w)
        prof = params.profile[idx % span]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = SARIMAX(z[n - w :] - prof, order=params.order, initialization="approximate_diffuse").filter(params.params, cov_type="none")
            f = res.forecast(k)
        one_step = np.asarray(res.forecasts[0][w - m :]) + prof[w - m :] if m else np.array([])
        return np.asarray(f) + params.profile[(i0 + n + np.arange(k)) % span], one_step


def fourier(idx: np.ndarray, period: int, harmonics: int) -> np.ndarray:
    cols = []
    for h in range(1, harmonics + 1):
        a = 2 * np.pi * h * (idx % period) / period
        cols += [np.sin(a), np.cos(a)]
    return np.column_stack(cols)


@dataclass(frozen=True)
class SarimaxParams:
    order: tuple[int, int, int]
    params: np.ndarray = field(repr=False)
    daily_k: int
    weekly_k: int
    period: int
    week: int
    window: int


class SarimaxFourier(_PathCandidate):
    name = "sarimax_fourier"
    min_days = 2.0
    train_days = 4.0
    description = "regression on daily (+ weekly) Fourier terms with ARIMA(1,1,1) errors (statsmodels SARIMAX)"
    order = (1, 1, 1)
    # approximate-diffuse start: the exact stationary start made each likelihood evaluation
    # 6x slower on ServeGen m-mid (MA near -1) and a fit took > 10 s; the filter burns in within a few windows

    def _exog(self, idx, p: SarimaxParams | tuple):
        period, week, dk, wk = p
        x = fourier(idx, period, dk)
        if wk:
            x = np.column_stack([x, fourier(idx, week, wk)])
        return x

    def fit(self, z, i0, ctx):
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        n = len(z)
        wk = 2 if n >= 2 * ctx.week else 0
        dk = 4
        idx = i0 + np.arange(n)
        x = self._exog(idx, (ctx.period, ctx.week, dk, wk))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # NaN windows are skipped by the Kalman filter; no covariance: only the point estimates are used
            res = SARIMAX(z, exog=x, order=self.order, initialization="approximate_diffuse").fit(disp=False, maxiter=50, cov_type="none")
        return SarimaxParams(self.order, np.asarray(res.params), dk, wk, ctx.period, ctx.week, max(48, ctx.period // 3))

    def _run(self, params: SarimaxParams, z, i0, k, m):
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        n = len(z)
        w = min(n, params.window)
        key = (params.period, params.week, params.daily_k, params.weekly_k)
        idx = i0 + n - w + np.arange(w)
        fidx = i0 + n + np.arange(k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = SARIMAX(z[n - w :], exog=self._exog(idx, key), order=params.order, initialization="approximate_diffuse").filter(params.params, cov_type="none")
            f = res.forecast(k, exog=self._exog(fidx, key))
        one_step = np.asarray(res.forecasts[0][w - m :]) if m else np.array([])
        return np.asarray(f), one_step


@dataclass(frozen=True)
class QRParams:
    coefs: dict  # (k, q) -> coefficient vector
    period: int


class QuantileRegression(Candidate):
    """Direct quantile regression per horizon (statsmodels QuantReg), anchored on the last value.

    Features: the last value, the two before it, the last hour's mean, the
    change the daily profile expects between now and the target window, and
    the change seen over the same interval one day earlier. Fitting the
    quantile directly, rather than a mean plus a symmetric band, is robust to the
    heavy-tailed drops and bursts of production traces (a dominant client
    switching off moves the pool by half).
    """

    name = "quantile_regression"
    min_days = 3.0
    train_days = 7.0  # 4 days of origins after the 3 days of lags: enough rows, and the fit stays < 1 s
    description = "direct linear quantile regression per horizon on lags + daily profile (statsmodels QuantReg)"

    @staticmethod
    def _features(zf: np.ndarray, t: np.ndarray, k: int, period: int) -> np.ndarray:
        # zf is gap-filled; t are origin positions (>= 3 * period)
        def prof(pos):
            return (zf[pos - period] + zf[pos - 2 * period] + zf[pos - 3 * period]) / 3.0

        hour = max(1, period // 24)
        csum = np.concatenate([[0.0], np.cumsum(zf)])
        recent = (csum[t + 1] - csum[t + 1 - hour]) / hour
        return np.column_stack([
            np.ones(len(t)), zf[t], zf[t - 1], zf[t - 2], recent,
            prof(t + k) - prof(t), zf[t + k - period] - zf[t - period],
        ])

    def fit(self, z, i0, ctx):
        from statsmodels.regression.quantile_regression import QuantReg

        zf = fill_gaps(z, ctx.period)
        n = len(z)
        coefs = {}
        qs = sorted(set(ctx.quantiles) | {0.5})
        for k in ctx.ks:
            t = np.arange(3 * ctx.period, n - k)
            y = z[t + k]
            ok = ~np.isnan(y)
            if ok.sum() < 50:
                raise ValueError("too little history for quantile regression")
            x = self._features(zf, t[ok], k, ctx.period)
            for q in qs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    coefs[(k, q)] = np.asarray(QuantReg(y[ok], x).fit(q=q, max_iter=2000).params)
        return QRParams(coefs, ctx.period)

    def _predict(self, params: QRParams, z, k, q):
        coef = params.coefs.get((k, q))
        if coef is None:
            return None
        period = params.period
        n = len(z)
        if n < 3 * period + 2:
            raise ValueError("quantile regression needs three days of history at predict time")
        tail = z[n - 3 * period - 2 :]
        zf = fill_gaps(tail, period)
        # the target's own lags are in the future for k > 0: extend with NaN-free placeholders never read
        zf = np.concatenate([zf, np.zeros(k)])
        x = self._features(zf, np.array([len(tail) - 1]), k, period)
        return float(x[0] @ coef)

    def point(self, params, z, i0, k):
        v = self._predict(params, z, k, 0.5)
        if v is None:
            raise KeyError(f"quantile regression was not fitted for horizon {k} steps")
        return v

    def direct_quantile(self, params, z, i0, k, q):
        return self._predict(params, z, k, q)


def _nanmedian_rows(a: np.ndarray, min_obs: int = 1) -> np.ndarray:
    """Median of each row's observed values; NaN where fewer than `min_obs` (>= 1) are observed.

    Sort-based (NaN sorts last) rather than np.nanmedian, which goes through masked
    arrays and costs ~0.3 ms per call on the handful of values a tick reads.
    """
    a = np.asarray(a, dtype=float)
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    srt = np.sort(a, axis=1)
    cnt = np.sum(~np.isnan(a), axis=1)
    rows = np.arange(a.shape[0])
    lo = np.clip((cnt - 1) // 2, 0, a.shape[1] - 1)
    hi = np.clip(cnt // 2, 0, a.shape[1] - 1)
    med = 0.5 * (srt[rows, lo] + srt[rows, hi])
    return np.where(cnt >= max(1, min_obs), med, np.nan)


def _centred3(z: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Median of z[p-1], z[p], z[p+1] (observed ones) at positions pos; NaN outside z."""
    n = len(z)
    if n == 0:
        return np.full(len(pos), np.nan)
    j = pos[:, None] + np.array([-1, 0, 1])[None, :]
    inside = (j >= 0) & (j < n)
    vals = np.where(inside, z[np.minimum(np.maximum(j, 0), n - 1)], np.nan)
    return _nanmedian_rows(vals)


def _trailing_median(z: np.ndarray, origins: np.ndarray, window: int) -> np.ndarray:
    """Median of the observed values in z[o - window + 1 : o + 1]; NaN with < window/4 observed.

    One origin (the per-tick forecast) reads its slice; many (a fit) use pandas'
    rolling median, O(n log window), with the same definition.
    """
    min_obs = max(1, window // 4)
    if len(origins) <= 4:
        out = []
        for o in origins:
            w = z[max(0, o - window + 1) : o + 1]
            w = w[~np.isnan(w)]
            out.append(float(np.median(w)) if len(w) >= min_obs else np.nan)
        return np.array(out)
    import pandas as pd

    roll = pd.Series(z).rolling(window, min_periods=min_obs).median().to_numpy()
    return roll[origins]


SEASON_DAYS = (7,)  # median of the same-interval change over the last (up to) 7 days [tuning days]


def regression_features(z: np.ndarray, origins: np.ndarray, k: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(anchor, X): the last observed log rate at each origin and the regressors for z[o + k] - anchor.

    Columns, each a function of z[: o + 1] only (no look-ahead):
    1. intercept;
    2. the change the daily cycle made over the same interval (o -> o + k) on
       each of the last (up to) 7 days, median over the days (robust to one odd
       day), from a centred 3-window median (robust to one odd window); 0 without
       history. (One column: medians over 3 and 7 days are the same number until
       a week of history exists, and the pair made the fit unstable [tuning days].)
    3. the last change (z[o] - z[o-1], 0 unless both were observed): a jump that
       is noise reverts, a ramp goes on;
    4. the change across a collection gap (z[o] - the last value before it, 0
       without a gap): the first window after a gap is often partial;
    5. the distance of the last value from its trailing-day median: level
       excursions (a burst, a dominant client pausing) revert partly within the hour.
    The regression decides per series, from its own out-of-sample history, how
    much of each to use: on a flat pool the seasonal columns get ~0.
    """
    o = np.asarray(origins, dtype=int)
    ff = forward_fill(z)
    anchor = ff[o]
    # the last change, split: between two observed windows, or across a collection gap (the
    # first window after a gap is often a partial one, and it reverts differently)
    zo = z[o]
    zp = np.where(o >= 1, z[np.maximum(o - 1, 0)], np.nan)
    prev = np.where(o >= 1, ff[np.maximum(o - 1, 0)], np.nan)
    d1 = np.where(np.isnan(zo) | np.isnan(zp), 0.0, zo - zp)
    d1_gap = np.where(~np.isnan(zo) & np.isnan(zp) & ~np.isnan(prev), zo - prev, 0.0)
    mu = _trailing_median(z, o, period)
    dev = np.where(np.isnan(mu), 0.0, anchor - mu)
    cols = [np.ones(len(o))]
    j = np.arange(1, max(SEASON_DAYS) + 1)
    a = o[:, None] + k - j[None, :] * period  # the target's window j days earlier
    b = o[:, None] - j[None, :] * period  # the origin's window j days earlier
    ok = (b - 1 >= 0) & (a + 1 <= o[:, None])  # the centred median at a must be known at the origin
    both = _centred3(z, np.concatenate([np.where(ok, a, 0).ravel(), np.where(ok, b, 0).ravel()]))
    ca, cb = both[: a.size].reshape(a.shape), both[a.size :].reshape(a.shape)
    changes = np.where(ok, ca - cb, np.nan)
    for d in SEASON_DAYS:
        sc = _nanmedian_rows(changes[:, :d])
        cols.append(np.where(np.isnan(sc), 0.0, sc))
    cols += [d1, d1_gap, dev]
    return anchor, np.column_stack(cols)


@dataclass(frozen=True)
class RegressionParams:
    coefs: dict  # k -> coefficient vector (regression_features columns)
    period: int


class RobustRegression(Candidate):
    """Direct robust linear regression per horizon of the log-rate change (statsmodels RLM, Huber's T).

    Pooled over every day of the history (up to `train_days`), one small model per
    horizon, predicting z[o + k] - z[o] from the features above. Huber's loss
    (Huber 1964; statsmodels' RLM default tuning 1.345) keeps the bursts and
    collection artefacts of production traces from steering the fit, which the
    quantile regression of issue 5 did not survive on later days. Cheap: one
    IRLS fit of a few thousand rows x 5 columns per horizon (milliseconds).
    """

    name = "robust_regression"
    min_days = 1.0
    train_days = 14.0
    history_days = 7.2  # 7 days of same-interval changes + 1 day median + a little
    cheap = True
    description = "direct robust (Huber) regression per horizon on daily-cycle change, last change, excursion (statsmodels RLM)"

    def fit(self, z, i0, ctx):
        import statsmodels.api as sm

        n = len(z)
        coefs = {}
        # rows from the second day on: before it the seasonal columns would read 0 for "unknown"
        first = ctx.period if n - ctx.period > 10 * 5 + max(ctx.ks) else 1
        for k in ctx.ks:
            t = np.arange(first, n - k)
            anchor, x = regression_features(z, t, k, ctx.period)
            y = z[t + k] - anchor
            ok = ~np.isnan(y) & ~np.isnan(anchor)
            if ok.sum() < max(50, 10 * x.shape[1]):
                raise ValueError(f"too little history for the regression (horizon {k} steps: {int(ok.sum())} rows)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sm.RLM(y[ok], x[ok], M=sm.robust.norms.HuberT()).fit()
            b = np.asarray(res.params, dtype=float)
            if not np.all(np.isfinite(b)):
                raise ValueError(f"regression for horizon {k} steps did not converge")
            coefs[k] = b
        return RegressionParams(coefs, ctx.period)

    def points_at(self, params: RegressionParams, z, i0, origins, k):
        coef = params.coefs.get(k)
        if coef is None:
            raise KeyError(f"robust regression was not fitted for horizon {k} steps")
        anchor, x = regression_features(z, np.asarray(origins, dtype=int), k, params.period)
        return anchor + x @ coef

    def point(self, params, z, i0, k):
        return float(self.points_at(params, z, i0, np.array([len(z) - 1]), k)[0])


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (SeasonalNaive(), LastValue(), RobustRegression(), HoltWinters(), MstlArima(), SarimaxFourier(),
              QuantileRegression())
}
BASELINES = ("seasonal_naive", "last_value")
