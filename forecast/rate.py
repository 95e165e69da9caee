"""Request-rate forecasting for the planner: a quantile of the rate at a horizon.

Two halves, as the loop needs them:

- `RateForecaster.fit(history, previous=state)` (run on a schedule, e.g. hourly,
  in a worker; tens of milliseconds with the default candidates): re-estimates
  every candidate on all the history, and keeps an *online out-of-sample record*
  per candidate and horizon: the forecasts the previous fit's parameters made at
  every origin since then, and what then happened. From that record alone it
  calibrates the bands and selects the model. Nothing is ever scored on data
  its parameters were fitted on.
- `predict(state, history, now, horizon_s, quantile)` (pure; every tick;
  well under a millisecond): the chosen model's point forecast from the latest
  windows plus the calibrated band.

Calibration (why it holds on later days, issue 15): the band is the empirical
quantile of the model's own last `calibration_days` of out-of-sample log errors
(split-conformal with a sliding window, Vovk et al.), at a level that adaptive
conformal inference moves online (Gibbs & Candès 2021, "Adaptive conformal
inference under distribution shift": alpha <- alpha + gamma (alpha* - miss)),
so a run of misses on a wilder day widens the band within hours instead of
waiting for a re-selection. The point model is chosen by the same record:
the candidate with the lowest trailing pinball loss (in req/s, at the planning
quantile, with the band it actually had) over the last `selection_days`, but
only if it beats the better naive baseline by `selection_margin`; otherwise the
naive baseline is used (it is always tracked, so falling back costs nothing).

The first fit (no previous state) bootstraps that record: parameters fitted on
all but the last `validation_days`, replayed over them hour by hour.

Everything is in log(rate + c): errors are relative, so one calibration serves
both the 3 a.m. trough and the noon peak. Missing windows are NaN throughout.
History shorter than `min_history_days` falls back to a robust recent-peak
rule; a level shift (the last few windows all far outside the one-step band)
lifts the forecast to at least that rule and flags `needs_refit`.

Constants marked [tuning days] were chosen by looking at results on days 0-6
of the ServeGen pools only (bench/forecast_bench.py prints days 7-9 apart,
never used to choose anything).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, Iterable

import numpy as np

from forecast.models import BASELINES, CANDIDATES, FitContext
from forecast.series import DAY_S, WEEK_S, RateSeries, series_from_windows, to_epoch

# Both refit in milliseconds, so every scheduled refit re-selects between them. Seasonal naive is
# not a default candidate [tuning days]: as the comparison of selection it flip-flopped on m-mid
# (yesterday's level at 30-60 min is 70-180% worse than the last value on every pool) and cost
# the selection 6-9 points; the regression carries the daily cycle's change instead. It stays
# available (candidates=...) and is always the benchmark's second baseline.
DEFAULT_CANDIDATES = ("last_value", "robust_regression")
MIN_CALIBRATION = 20  # out-of-sample errors needed before a band is trusted


@dataclass(frozen=True)
class RateForecastConfig:
    step_s: float | None = None  # model grid; None = max(native window, 300 s)
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    validation_days: float = 1.0  # first fit only: the stretch the record is bootstrapped on
    calibration_days: float = 2.0  # sliding conformal window of out-of-sample errors [tuning days]
    selection_days: float = 4.0  # trailing stretch the selection scores [tuning days: 2 -> 4 steadier]
    selection_margin: float = 0.05  # a model must beat the better naive baseline by this share
    aci_gamma: float = 0.005  # adaptive-conformal step per feedback [tuning days]
    budget_s: float = 5.0  # wall time one fit may take; expensive candidates are skipped after it
    horizons_s: tuple[float, ...] = (360.0,)  # horizons predict will be asked for (others: nearest calibrated)
    quantiles: tuple[float, ...] = (0.9,)  # the first one is the planning quantile (ACI-corrected, scores selection)
    min_history_days: float = 2.0  # less observed history: the recent-peak rule
    peak_window_s: float = 3600.0  # recent-peak rule: look back this far
    offset_frac: float = 0.05  # c in log(rate + c), as a fraction of the median rate (zero-rate windows stay finite)


@dataclass(frozen=True)
class Track:
    """One candidate's out-of-sample record at one horizon (k windows ahead), oldest first."""

    origins: np.ndarray  # absolute index of the last window known when the forecast was made
    points: np.ndarray  # log-rate forecast of window origin + k
    bands: np.ndarray  # planning-quantile offset (log) live at that origin; NaN: no band yet
    actuals: np.ndarray  # log rate of window origin + k; NaN: not known yet, or missing
    alpha: float  # adaptive-conformal miscoverage level now
    fed_upto: int = -(2**62)  # origins up to this one have given their coverage feedback

    @staticmethod
    def empty(alpha: float) -> "Track":
        e = np.array([])
        return Track(np.array([], dtype=np.int64), e, e, e, alpha)

    def errors(self, last_n: int) -> np.ndarray:
        """The latest `last_n` known out-of-sample log errors (actual - point)."""
        e = self.actuals - self.points
        e = e[~np.isnan(e)]
        return e[-last_n:]


@dataclass(frozen=True)
class FittedRate:
    """The state `predict` needs; built by `RateForecaster.fit`. Nothing in it is a live connection."""

    method: str  # chosen candidate, or "recent_peak"
    params: dict = field(repr=False, default_factory=dict)  # candidate -> fitted parameters (fitted ones only)
    step_s: float = 300.0
    offset: float = 0.0
    fit_end: int = 0  # absolute grid index one past the last window the fit saw
    tracks: dict = field(repr=False, default_factory=dict)  # (candidate, k) -> Track
    scores: dict = field(default_factory=dict)  # candidate -> {"status", "pinball", "vs_naive", "origins", "fit_s"}
    fit_seconds: float = 0.0
    config: RateForecastConfig = RateForecastConfig()
    notes: tuple[str, ...] = ()
    tail: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))  # log rates up to fit_end
    requested: str = "auto"  # what the fit was asked for ("auto" or one candidate)

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(sorted({k for _, k in self.tracks}))

    @property
    def tail_start(self) -> int:
        return self.fit_end - len(self.tail)

    def band_errors(self, name: str, k: int) -> np.ndarray:
        tr = self.tracks.get((name, k))
        return tr.errors(_cal_n(self)) if tr is not None else np.array([])


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
        sm = np.median(np.lib.stride_tricks.sliding_window_view(v, 3), axis=1)
    else:
        sm = v
    peak = max(float(np.quantile(sm, quantile)), float(sm[-1]))
    return peak, float(np.median(v[-3:]))


def _ks(config: RateForecastConfig, step: float) -> tuple[int, ...]:
    # a tick between window ends asks for one step further: calibrate both; k = 1 for the level-shift check
    return tuple(sorted({1} | {max(1, math.ceil(h / step - 1e-9)) + d for h in config.horizons_s for d in (0, 1)}))


def _cal_n(state_or_cfg, period: int | None = None) -> int:
    cfg = state_or_cfg.config if isinstance(state_or_cfg, FittedRate) else state_or_cfg
    if period is None:
        period = int(round(DAY_S / state_or_cfg.step_s))
    return max(MIN_CALIBRATION, int(round(cfg.calibration_days * period)))


# ---------------------------------------------------------------------------------------------
# the online out-of-sample record


def _sweep(track: Track, points_fn, z: np.ndarray, i0: int, first: int, last: int, k: int, q: float,
           gamma: float, cal_n: int, feed_to: int | None = None) -> Track:
    """The online record, one origin at a time, exactly as `predict` lives it.

    For each origin o in first..last (absolute): first the forecasts whose target
    is window o (known once o is) give their error and their coverage feedback to
    ACI; then the forecast made at o is recorded with the band a forecast made at
    o gets: the last `cal_n` known errors at the current ACI level. After `last`,
    targets up to `feed_to` (default `last`) are fed too. `points_fn(origins_abs)`
    gives the point forecasts of the params live at those origins. Pure: returns
    a new Track.
    """
    feed_to = last if feed_to is None else feed_to
    new_o = np.arange(first, last + 1, dtype=np.int64)
    new_p = np.asarray(points_fn(new_o), dtype=float) if len(new_o) else np.array([])
    origins = np.concatenate([track.origins, new_o])
    points = np.concatenate([track.points, new_p])
    bands = np.concatenate([track.bands, np.full(len(new_o), np.nan)])
    actuals = np.concatenate([track.actuals, np.full(len(new_o), np.nan)])
    n_old = len(track.origins)
    tgt = origins + k
    zlen = len(z)
    known = [float(e) for e in (track.actuals - track.points) if not math.isnan(e)][-cal_n:]
    alpha, fed = track.alpha, track.fed_upto
    # entries waiting for their target, in target order (= origin order for one k)
    waiting = [i for i in np.flatnonzero(origins > fed)]
    wi = 0
    for tau in range(min(first, int(tgt[waiting[0]]) if waiting else first), max(last, feed_to) + 1):
        while wi < len(waiting) and tgt[waiting[wi]] <= tau:
            i = waiting[wi]
            wi += 1
            if tgt[i] > feed_to:
                wi -= 1
                break
            j = int(tgt[i]) - i0
            if 0 <= j < zlen and not math.isnan(z[j]):
                actuals[i] = z[j]
                if not math.isnan(points[i]):
                    known.append(float(z[j] - points[i]))
                    if len(known) > cal_n:
                        del known[0]
                    if not math.isnan(bands[i]):
                        miss = 1.0 if z[j] > points[i] + bands[i] else 0.0
                        alpha = alpha + gamma * ((1.0 - q) - miss)
            fed = int(origins[i])
        if first <= tau <= last and len(known) >= MIN_CALIBRATION:
            bands[n_old + tau - first] = float(np.quantile(known, _level(alpha)))
    return replace(track, origins=origins, points=points, bands=bands, actuals=actuals, alpha=alpha, fed_upto=fed)


def _trim(track: Track, keep: int) -> Track:
    if len(track.origins) <= keep:
        return track
    s = slice(len(track.origins) - keep, None)
    return replace(track, origins=track.origins[s], points=track.points[s], bands=track.bands[s],
                   actuals=track.actuals[s])


def _level(alpha: float) -> float:
    """The quantile level ACI's miscoverage `alpha` asks for, clipped to [0.5, 0.99].

    The state itself is not clipped (Gibbs & Candès): after a long outage it may sit
    below 0 and recovers at gamma * (1 - q) per covered window; the clip only keeps
    the band finite meanwhile.
    """
    return min(0.99, max(0.5, 1.0 - alpha))


def _score(tracks: dict, names, ks, since: int, c: float, q: float) -> dict:
    """Pinball (req/s) per candidate at each horizon over the origins it has a band for since `since`."""
    out = {}
    for name in names:
        per_k = {}
        for k in ks:
            tr = tracks.get((name, k))
            if tr is None:
                continue
            ok = (tr.origins >= since) & ~np.isnan(tr.actuals) & ~np.isnan(tr.bands) & ~np.isnan(tr.points)
            a = np.maximum(np.exp(tr.actuals[ok]) - c, 0.0)
            f = np.maximum(np.exp(tr.points[ok] + tr.bands[ok]) - c, 0.0)
            d = a - f
            per_k[k] = (tr.origins[ok], np.maximum(q * d, (q - 1) * d))
        out[name] = per_k
    return out


def _select(tracks: dict, names, horizon_ks, since: int, c: float, q: float, margin: float, min_n: int,
            scores: dict) -> tuple[str, dict]:
    """The candidate with the best trailing pinball if it beats the better naive baseline by `margin`."""
    losses = _score(tracks, names, horizon_ks, since, c, q)

    def mean_on(name, common):
        vals = []
        for k in horizon_ks:
            o, l = losses[name].get(k, (np.array([]), np.array([])))
            vals.append(l[np.isin(o, common)])
        v = np.concatenate(vals) if vals else np.array([])
        return float(np.mean(v)) if len(v) else math.inf

    def origins_of(name):
        sets = [set(losses[name][k][0].tolist()) for k in horizon_ks if k in losses[name]]
        if len(sets) != len(horizon_ks):
            return set()
        return set.intersection(*sets) if sets else set()

    naive = [n for n in BASELINES if n in names]
    naive_o = {n: origins_of(n) for n in naive}
    common_naive = set.intersection(*naive_o.values()) if naive_o else set()
    best_naive = None
    if naive:
        cn = np.array(sorted(common_naive))
        pb = {n: mean_on(n, cn) if len(cn) else math.inf for n in naive}
        best_naive = min(naive, key=lambda n: (pb[n], naive.index(n) if n != "last_value" else -1))
        for n in naive:
            scores.setdefault(n, {}).update({"pinball": _r(pb[n]), "origins": len(cn)})
    chosen, best_ratio = best_naive, math.inf
    for name in names:
        if name in BASELINES:
            continue
        o = origins_of(name)
        if best_naive is not None:
            o &= naive_o[best_naive]
        common = np.array(sorted(o))
        sc = scores.setdefault(name, {})
        sc["origins"] = len(common)
        if len(common) < min_n:
            sc["selection"] = f"not selectable: {len(common)} scored origins < {min_n}"
            continue
        mine = mean_on(name, common)
        sc["pinball"] = _r(mine)
        if best_naive is None:
            ratio = mine
        else:
            ref = mean_on(best_naive, common)
            ratio = mine / ref if ref > 0 else math.inf
            sc["vs_naive"] = _r(ratio)
        if ratio < best_ratio:
            best_ratio, best = ratio, name
    if best_naive is None:
        return (best if best_ratio < math.inf else names[0]), losses
    if best_ratio < 1.0 - margin:
        return best, losses
    return best_naive, losses


def _r(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


class RateForecaster:
    """Fits per-series models within a time budget; `predict` (module level) uses the result."""

    def __init__(self, config: RateForecastConfig | None = None, clock: Callable[[], float] = time.perf_counter):
        self.config = config or RateForecastConfig()
        self.clock = clock  # measures the budget only; forecasts never read a clock

    def refit(self, state: FittedRate, history: RateSeries | Iterable) -> FittedRate:
        """The scheduled refit: every candidate re-estimated, the record extended, the model re-selected."""
        if state.method == "recent_peak" and not state.tracks:
            return self.fit(history, model=state.requested)
        return self.fit(history, model=state.requested, previous=state)

    def fit(self, history: RateSeries | Iterable, model: str = "auto", previous: FittedRate | None = None) -> FittedRate:
        """Select (model="auto") or fit one candidate; with `previous`, continue its online record."""
        cfg = self.config
        t_start = self.clock()
        series = _to_series(history)
        step = _model_step(series.step_s, cfg)
        series = series.resample(step)
        if model != "auto" and model not in CANDIDATES:
            raise ValueError(f"unknown model {model!r}; choose auto or one of {', '.join(CANDIDATES)}")
        names = tuple(cfg.candidates) if model == "auto" else (model,)
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            raise ValueError(f"unknown candidate {unknown[0]!r} in candidates; choose from {', '.join(CANDIDATES)}")
        obs = series.values[~np.isnan(series.values)]
        period = int(round(DAY_S / step))
        fit_end = series.index0 + len(series)
        ks = _ks(cfg, step)
        if previous is not None and not _continues(previous, step, ks, names, fit_end, cfg):
            previous = None
        pos = obs[obs > 0]
        if previous is not None:
            offset = previous.offset  # the record's errors are in this log scale: keep it
        else:
            offset = max(1e-6, cfg.offset_frac * float(np.median(pos))) if len(pos) else 1e-3
        observed_days = len(obs) * step / DAY_S
        if observed_days < cfg.min_history_days:
            return FittedRate("recent_peak", {}, step, offset, fit_end, config=cfg, requested=model,
                              fit_seconds=self.clock() - t_start,
                              notes=(f"{observed_days:.2f} days observed < {cfg.min_history_days}: recent-peak rule",))
        # the fits read at most the longest train_days; the record and predict need less
        keep_n = int(round(max(CANDIDATES[n].train_days for n in names) * period)) + max(ks) + 2
        series = series.last(keep_n) if len(series) > keep_n else series
        z = _log(series.values, offset)
        n = len(z)
        i0 = series.index0
        ctx = FitContext(period=period, week=int(round(WEEK_S / step)), ks=ks, quantiles=tuple(cfg.quantiles))
        q = cfg.quantiles[0]
        cal_n = _cal_n(cfg, period)
        sel_n = max(1, int(round(cfg.selection_days * period)))
        keep = max(cal_n, sel_n) + max(ks) + 2
        scores: dict[str, dict] = {}
        notes: list[str] = []

        def fit_all(upto: int, old: dict) -> dict:
            """Parameters of every candidate from z[:upto]; an expensive one past the budget keeps `old`."""
            out = {}
            for name in names:
                cand = CANDIDATES[name]
                sc = scores.setdefault(name, {})
                if not cand.cheap and self.clock() - t_start > cfg.budget_s:
                    sc["status"] = "skipped: time budget spent" + ("; previous fit kept" if name in old else "")
                    if name in old:
                        out[name] = old[name]
                    continue
                lo = max(0, upto - int(round(cand.train_days * period)))
                if (upto - lo) < cand.min_days * period:
                    sc["status"] = f"skipped: needs {cand.min_days:g} days"
                    continue
                t0 = self.clock()
                try:
                    out[name] = cand.fit(z[lo:upto], i0 + lo, ctx)
                    sc.update(status="ok", fit_s=round(self.clock() - t0, 4))
                except Exception as e:  # a candidate that cannot fit this series is out, the others go on
                    sc["status"] = f"failed: {type(e).__name__}: {e}"
                    if name in old:
                        out[name] = old[name]
                        sc["status"] += "; previous fit kept"
            return out

        def advance(tracks: dict, params: dict, first: int, last: int) -> dict:
            """The record extended by the forecasts `params` made at origins first..last (absolute),
            with every target before fit_end fed back."""
            out = dict(tracks)
            for name in {nm for nm, _ in tracks} | set(params):
                cand = CANDIDATES[name]
                for k in ks:
                    tr = out.get((name, k)) or Track.empty(1.0 - q)
                    if name in params:
                        prm = params[name]

                        def pts(o, cand=cand, prm=prm, k=k):
                            return cand.points_at(prm, z, i0, o - i0, k)
                        lo, hi = first, last
                    else:  # not fitted then: nothing recorded, pending targets still fed
                        def pts(o):
                            return np.full(len(o), np.nan)
                        lo, hi = first, first - 1
                    try:
                        tr = _sweep(tr, pts, z, i0, lo, hi, k, q, cfg.aci_gamma, cal_n, feed_to=fit_end - 1)
                    except Exception as e:  # noqa: BLE001 - a candidate that cannot forecast here is not recorded
                        notes.append(f"{name}: no forecast at k={k}: {type(e).__name__}: {e}")
                        tr = _sweep(tr, lambda o: np.full(len(o), np.nan), z, i0, first, last, k, q,
                                    cfg.aci_gamma, cal_n, feed_to=fit_end - 1)
                    out[(name, k)] = _trim(tr, keep)
            return out

        if previous is not None:
            # the forecasts the previous fit's parameters made since then: out of sample by construction
            tracks = advance(previous.tracks, previous.params, previous.fit_end - 1, fit_end - 2)
            params = fit_all(n, previous.params)
        else:
            # bootstrap: fit on all but the last validation_days and replay them origin by origin
            v = max(1, min(int(round(cfg.validation_days * period)), n - period))
            n_train = n - v
            params_v = fit_all(n_train, {})
            tracks = advance({}, params_v, i0 + n_train - 1, fit_end - 2)
            # the errors seed the band; ACI's level starts afresh: it was learnt on parameters fitted
            # on a day less than the live ones [tuning days: keeping it cost m-small 3 points of gain]
            tracks = {key: replace(tr, alpha=1.0 - q) for key, tr in tracks.items()}
            params = fit_all(n, {})
            notes.append(f"record bootstrapped on the last {v * step / DAY_S:.2f} days")
        # which model: trailing out-of-sample pinball at the horizons the loop asks for
        horizon_ks = tuple(k for k in ks if k != 1) or ks
        candidates = tuple(nm for nm in names if nm in params)
        if not candidates:
            return FittedRate("recent_peak", {}, step, offset, fit_end, config=cfg, requested=model, scores=scores,
                              fit_seconds=self.clock() - t_start, notes=("no candidate could be fitted",))
        if model == "auto":
            # half a day of scored origins: enough to compare, and a bootstrap (one day) can select
            min_n = max(MIN_CALIBRATION, period // 2)
            chosen, _ = _select(tracks, candidates, horizon_ks, fit_end - sel_n, offset, q, cfg.selection_margin,
                                min_n, scores)
        else:
            chosen = model
        if len(tracks.get((chosen, horizon_ks[0]), Track.empty(0.1)).errors(cal_n)) < MIN_CALIBRATION:
            notes.append(f"{chosen}: fewer than {MIN_CALIBRATION} out-of-sample errors yet: recent-peak rule")
            chosen_method = "recent_peak"
        else:
            chosen_method = chosen
        need = int(round(max(CANDIDATES[nm].history_days for nm in candidates) * period)) + max(ks) + 8
        tail = z[max(0, n - need) :].copy()
        return FittedRate(chosen_method, params, step, offset, fit_end, tracks, scores,
                          fit_seconds=self.clock() - t_start, config=cfg, notes=tuple(notes), tail=tail,
                          requested=model)


def _continues(prev: FittedRate, step: float, ks: tuple, names: tuple, fit_end: int, cfg) -> bool:
    """Can this fit extend `prev`'s record? Same grid, horizons and candidates, and no long gap."""
    if not prev.tracks or abs(prev.step_s - step) > 1e-9 or prev.ks != ks:
        return False
    if set(prev.params) - set(names) or not set(names) & set(prev.params):
        return False
    period = DAY_S / step
    # behind the previous fit (history rewound), or so far ahead that its bands are stale
    return prev.fit_end <= fit_end <= prev.fit_end + cfg.calibration_days * period


def _nearest_k(state: FittedRate, name: str, k: int) -> int:
    ks = [kk for (nm, kk) in state.tracks if nm == name]
    if not ks:
        return k
    if k in ks:
        return k
    return min(ks, key=lambda x: (abs(x - k), -x))


def predict(state: FittedRate, history: RateSeries | Iterable, now: datetime | float, horizon_s: float,
            quantile: float) -> RateQuantile:
    """The `quantile` of the mean rate over the window holding now + horizon_s. Pure and cheap.

    `history` needs only the windows after the fit (`state.fit_end`) and the last
    `peak_window_s`; older windows come from the state's own tail and are not read.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    now_s = to_epoch(now)
    step = state.step_s
    cfg = state.config
    c = state.offset
    target_idx = math.ceil((now_s + horizon_s) / step - 1e-9) - 1
    target_start = target_idx * step
    series = _to_series(history) if history is not None else None
    if series is not None and len(series):
        rule_only = state.method == "recent_peak" and len(state.tail) == 0
        # a rule-only state has no grid of its own yet: the rule reads the history on its model grid
        grid_step = _model_step(series.step_s, cfg) if rule_only else step
        series = series.resample(grid_step).until(now_s)
    known_end = int(math.floor(now_s / step + 1e-9))  # windows before this index have ended by now
    # assemble the log-rate grid: the fit's tail, then whatever the history adds after it
    if state.method == "recent_peak" and not state.tracks or len(state.tail) == 0:
        if series is None or len(series) == 0 or series.observed() == 0:
            return RateQuantile(0.0, 0.0, 0.0, quantile, horizon_s, target_start, "no_data",
                                details={"reason": "no observed window"})
        peak, median = recent_peak(series, now_s, quantile, cfg.peak_window_s)
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            details={"notes": list(state.notes)})
    t0 = state.tail_start
    end = state.fit_end
    if series is not None and len(series):
        end = max(end, series.index0 + len(series))
    end = min(end, known_end)
    if end <= t0:
        return RateQuantile(0.0, 0.0, 0.0, quantile, horizon_s, target_start, "no_data",
                            details={"reason": "now is before the fitted history"})
    z = np.full(end - t0, np.nan)
    m = min(len(state.tail), end - t0)
    z[:m] = state.tail[:m]
    if series is not None and len(series) and end > state.fit_end:
        a = max(state.fit_end, series.index0)
        b = min(end, series.index0 + len(series))
        if b > a:
            z[a - t0 : b - t0] = _log(series.values[a - series.index0 : b - series.index0], c)
    rates = np.maximum(np.exp(z) - c, 0.0)
    grid = RateSeries(t0 * step, step, rates)
    peak, median = recent_peak(grid, now_s, quantile, cfg.peak_window_s)
    if np.isnan(z).all():
        return RateQuantile(0.0, 0.0, 0.0, quantile, horizon_s, target_start, "no_data", details={"reason": "no observed window"})
    if state.method == "recent_peak":
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            details={"notes": list(state.notes)})
    last = end - 1
    if last < state.fit_end - 1:
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            details={"reason": "now is before the last fit"})
    k = max(1, target_idx - last)
    name = state.method
    cand = CANDIDATES[name]
    kk = _nearest_k(state, name, k)
    tr = state.tracks.get((name, kk))
    if tr is None or name not in state.params:
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            needs_refit=True, details={"reason": f"{name}: no record at {kk} steps"})
    prm = state.params[name]
    try:
        if cand.cheap:
            # the record brought up to now: the forecasts this state made since its fit whose targets are
            # known give their errors and ACI feedback, as they would have one by one (see _sweep)
            fresh = _sweep(tr, lambda o: cand.points_at(prm, z, t0, o - t0, kk), z, t0, state.fit_end - 1, last,
                           kk, cfg.quantiles[0], cfg.aci_gamma, _cal_n(state))
            pt = float(fresh.points[-1])
        else:
            # a state-space candidate re-runs its filter per origin: one forecast now, the record as of the fit
            fresh = tr
            pt = float(cand.points_at(prm, z, t0, np.array([last - t0]), kk)[0])
    except Exception as e:  # too little history for this model: the rule, and ask for a refit
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            needs_refit=True, details={"reason": f"{name}: {type(e).__name__}: {e}"})
    errs = fresh.errors(_cal_n(state))
    if len(errs) < MIN_CALIBRATION or math.isnan(pt):
        return RateQuantile(peak, median, min(median, peak), quantile, horizon_s, target_start, "recent_peak",
                            needs_refit=True, details={"reason": f"{name}: no calibrated forecast at {kk} steps"})
    level = _level(fresh.alpha) if abs(quantile - cfg.quantiles[0]) < 1e-12 else quantile
    widen = math.sqrt(k / kk) if k > kk else 1.0  # beyond the calibrated horizon: widen like a random walk
    e_hi, e_med, e_lo, q25, q75 = np.quantile(errs, [level, 0.5, 1.0 - quantile, 0.25, 0.75])
    zq, zmed, zlo = pt + e_med + (e_hi - e_med) * widen, pt + e_med, pt + e_med + (e_lo - e_med) * widen
    rate, point, lo = _unlog(zq, c), _unlog(zmed, c), _unlog(zlo, c)
    # robust spread of the log error (normal-equivalent sigma from the IQR) and in req/s around the median
    sigma_log = float((q75 - q25) / 1.349) * widen
    details = {"k_steps": k, "calibrated_k": kk, "step_s": step, "band_level": round(level, 4),
               "band_errors": int(len(errs)), "sigma_log": round(sigma_log, 4),
               "sigma_rps": round(point * sigma_log, 4)}
    shift = None
    m3 = 3
    if len(z) - m3 - 1 >= state.fit_end - 1 - t0 and (name, 1) in state.tracks:
        # the one-step forecasts due for the last 3 windows, all made after the fit
        pos = np.arange(len(z) - m3 - 1, len(z) - 1)
        try:
            one = np.asarray(cand.points_at(state.params[name], z, t0, pos, 1), dtype=float)
            shift = _level_shift(state.band_errors(name, 1), z[pos + 1], one)
        except Exception:  # noqa: BLE001 - the check is advisory
            shift = None
    if shift:
        details["level_shift"] = shift
        if shift == "up" and peak > rate:
            details["raised_to_recent_peak"] = True
            rate = peak
    return RateQuantile(rate, point, min(lo, point), quantile, horizon_s, target_start, name,
                        level_shift=bool(shift), needs_refit=bool(shift), details=details)


def _level_shift(e1: np.ndarray, actual: np.ndarray, one_step: np.ndarray) -> str | None:
    """"up"/"down" when the last few windows all fell outside the 97.5% one-step band.

    A single burst is not a shift; three windows in a row on one side of a band
    that should hold 95% of them is (chance: about 1 in 60,000 per check).
    """
    if e1 is None or len(e1) < 20 or len(one_step) == 0 or np.isnan(actual).any() or np.isnan(one_step).any():
        return None
    hi, lo = float(np.quantile(e1, 0.975)), float(np.quantile(e1, 0.025))
    e = actual - one_step
    if np.all(e > hi):
        return "up"
    if np.all(e < lo):
        return "down"
    return None
