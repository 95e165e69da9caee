"""Demand forecasting: the request rate at the planning quantile and the size mix, at a horizon.

The loop uses two calls:

    state = fit_demand(history, now)                     # on a schedule, in a worker (tens of ms)
    fc = forecast_demand(history, now, horizon_s, q, state)  # every tick (about a millisecond), pure

`history` is the service's DemandWindows in start order (gaps simply absent).
Without a state (first ticks, or before the first fit finished) the rate is the
robust recent-peak rule. See forecast.rate and forecast.mix for the methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Sequence

from daemon.domain import DemandForecast, DemandWindow

__all__ = ["DemandState", "fit_demand", "fit_due", "forecast_demand"]

@dataclass(frozen=True)
class DemandState:
    rate: object  # forecast.rate.FittedRate
    mix_config: object = None  # forecast.mix.MixConfig
    fitted_at: float = 0.0  # epoch of `now` at the fit
    selected_at: float = 0.0  # epoch of the first fit of this online record (selection happens at every fit)
    details: dict = field(default_factory=dict, compare=False)
    mix_snapshot: object = None  # forecast.mix.MixSnapshot at fitted_at

    def history_since(self) -> datetime:
        """The oldest window start `forecast_demand` reads from `history` with this state.

        The rate state keeps its own tail of the series up to the fit and the mix
        its forgetting-weighted counts, so a tick needs only the windows since the
        fit (and the recent-peak rule's look-back). Older windows may be passed; they are skipped.
        """
        from forecast.series import from_epoch

        return from_epoch(_since_s(self, self.fitted_at))


def _since_s(state: "DemandState", now_s: float) -> float:
    r = state.rate
    peak_from = now_s - r.config.peak_window_s - r.step_s
    return min(r.fit_end * r.step_s if len(r.tail) else peak_from, peak_from, state.fitted_at) - r.step_s


def _windows_since(history: Sequence[DemandWindow], since_s: float, now_s: float) -> list[DemandWindow]:
    from forecast.windows import windows_since

    return windows_since(history, since_s, now_s)


def fit_demand(history: Sequence[DemandWindow], now: datetime | float, *, horizons_s: tuple[float, ...] = (360.0,),
               quantiles: tuple[float, ...] = (0.9,), config=None, mix_config=None, model: str = "auto",
               refit_of: DemandState | None = None, clock: Callable[[], float] = time.perf_counter) -> DemandState:
    """The expensive half: fit the rate models and extend their out-of-sample record, on what was known at `now`.

    `horizons_s` should hold the loop's horizon (tick interval + lead time) and
    `quantiles` the planning quantile, so both are calibrated directly. With
    `refit_of`, that state's online record is continued (the scheduled refit:
    every cheap candidate re-estimated and re-selected, tens of milliseconds);
    without it the record is bootstrapped on the last day of history. Run it in
    a worker (the loop's scheduler), never inside a tick.
    """
    from dataclasses import replace

    from forecast.mix import MixConfig, carry_snapshot, mix_snapshot
    from forecast.rate import RateForecastConfig, RateForecaster
    from forecast.series import series_from_windows, to_epoch

    now_s = to_epoch(now)
    cfg = replace(config or RateForecastConfig(), horizons_s=tuple(horizons_s), quantiles=tuple(quantiles))
    past = [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]
    if not past:
        raise ValueError("no demand window before now: nothing to fit")
    forecaster = RateForecaster(cfg, clock=clock)
    series = series_from_windows(past)
    previous = refit_of.rate if refit_of is not None else None
    state = forecaster.fit(series, model=model, previous=previous)
    continued = previous is not None and bool(state.tracks) and bool(previous.tracks)
    selected_at = refit_of.selected_at if continued else now_s
    mcfg = mix_config or (refit_of.mix_config if refit_of is not None else None) or MixConfig()
    prev = refit_of.mix_snapshot if refit_of is not None else None
    if prev is not None and prev.at <= now_s and (prev.half_life_s, prev.short_half_life_s) == (
            mcfg.half_life_s, mcfg.short_half_life_s):
        snap = carry_snapshot(prev, [w for w in past if w.start_s + w.seconds > prev.at + 1e-6], now_s)
    else:
        snap = mix_snapshot(past, now_s, mcfg)
    return DemandState(rate=state, mix_config=mcfg, fitted_at=now_s, selected_at=selected_at,
                       details={"method": state.method, "fit_seconds": round(state.fit_seconds, 4),
                                "scores": state.scores, "notes": list(state.notes)},
                       mix_snapshot=snap)


def fit_due(state: DemandState | None, now: datetime | float, refit_every_s: float = 3600.0,
            reselect_every_s: float = 86400.0, needs_refit: bool = False) -> str | None:
    """What the scheduler should run now: "select" (bootstrap a new record), "refit" (continue it) or None.

    Every refit re-selects the model from the online record, so a state that has
    one is only ever refitted ("refit" every `refit_every_s`, or at once on
    `needs_refit`: a level shift, or history that no longer reaches the fit).
    "select" is for no state yet, and for a recent-peak state (too little history
    then) once `refit_every_s` has passed, or `reselect_every_s` without a record.
    """
    from forecast.series import to_epoch

    now_s = to_epoch(now)
    if state is None:
        return "select"
    has_record = bool(getattr(state.rate, "tracks", None))
    if not has_record:
        if now_s - state.fitted_at >= refit_every_s or now_s - state.selected_at >= reselect_every_s:
            return "select"
        return None
    if needs_refit or now_s - state.fitted_at >= refit_every_s:
        return "refit"
    return None


def forecast_demand(history: Sequence[DemandWindow], now: datetime | float, horizon_s: float, quantile: float,
                    state: DemandState | None = None, *, service: str | None = None) -> DemandForecast:
    """The cheap half: the `quantile` of the request rate at now + horizon_s and the mix to plan for.

    `details` carries the uncertainty for the planner: `point_rps` (median),
    `lo_rps` / `hi_rps` (the 1 - q and q quantiles: a central interval; `hi_rps`
    is `rate_rps` before any floor the loop applies), `sigma_rps` (a robust
    normal-equivalent spread), `band_level` and more (forecast/README.md).
    """
    from forecast.mix import MixConfig, estimate_mix
    from forecast.rate import FittedRate, RateForecastConfig, predict
    from forecast.series import from_epoch, series_from_windows, to_epoch

    now_s = to_epoch(now)
    at = now if isinstance(now, datetime) else from_epoch(now_s)
    if state is None:
        cfg = RateForecastConfig()
        recent = _windows_since(history, now_s - cfg.peak_window_s - 3600.0, now_s)
        past = [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]
        rate_state = FittedRate("recent_peak", {}, 300.0, 0.0, 0, config=cfg, notes=("no fitted state yet",))
        mix_cfg, snap = MixConfig(), None
    else:
        rate_state, mix_cfg = state.rate, state.mix_config or MixConfig()
        snap = state.mix_snapshot
        recent = past = _windows_since(history, _since_s(state, now_s), now_s)
        if snap is None:
            past = [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]
    name = service or (recent[0].service if recent else history[-1].service if len(history) else "")
    if not recent and (state is None or not len(getattr(rate_state, "tail", ()))):
        return DemandForecast(name, at, horizon_s, 0.0, (), "no_data", quantile, {"reason": "no demand window yet"})
    series = series_from_windows(recent) if recent else None
    rq = predict(rate_state, series, now_s, horizon_s, quantile)
    mix = estimate_mix(past, now_s, mix_cfg, snapshot=snap)
    if not mix.joint:  # no window to take a grid from: the caller falls back to its own rule
        return DemandForecast(name, at, horizon_s, rq.rate, (), rq.method, quantile,
                              {"point_rps": rq.point, "lo_rps": rq.lo, "hi_rps": rq.rate, **rq.details})
    details = {
        "point_rps": rq.point, "lo_rps": rq.lo, "hi_rps": rq.rate,
        "target_start": from_epoch(rq.target_start).isoformat(),
        "level_shift": rq.level_shift, "needs_refit": rq.needs_refit,
        "mix_shift": mix.shift, "mix_tv": round(mix.tv_distance, 4), "mix_memory": mix.memory,
        **rq.details,
    }
    return DemandForecast(name, at, horizon_s, rq.rate, mix.joint, rq.method, quantile, details)
