"""Demand forecasting: the request rate at the planning quantile and the size mix, at a horizon.

The loop uses two calls:

    state = fit_demand(history, now)                     # on a schedule, in a worker (seconds)
    fc = forecast_demand(history, now, horizon_s, q, state)  # every tick (milliseconds), pure

`history` is the service's DemandWindows (gaps simply absent). Without a state
(first ticks, or before the first fit finished) the rate is the robust
recent-peak rule. See forecast.rate and forecast.mix for the methods.
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
    selected_at: float = 0.0  # epoch of the last full model selection
    details: dict = field(default_factory=dict, compare=False)

    def history_since(self) -> datetime:
        """The oldest window start `forecast_demand` needs in `history` to use this state.

        Holt-Winters runs on from the end of its training stretch, and the
        regression features read three days of lags; pass at least this much.
        """
        from forecast.series import DAY_S, from_epoch

        r = self.rate
        step = r.step_s
        oldest = min(r.fit_end * step, self.fitted_at - 3 * DAY_S) - 10 * step
        return from_epoch(oldest)


def _past(history: Sequence[DemandWindow], now_s: float) -> list[DemandWindow]:
    from forecast.series import to_epoch

    return [w for w in history if w.start_s + w.seconds <= now_s + 1e-6]


def fit_demand(history: Sequence[DemandWindow], now: datetime | float, *, horizons_s: tuple[float, ...] = (360.0,),
               quantiles: tuple[float, ...] = (0.9,), config=None, mix_config=None, model: str = "auto",
               refit_of: DemandState | None = None, clock: Callable[[], float] = time.perf_counter) -> DemandState:
    """The expensive half: select and fit the rate model on what was known at `now`.

    `horizons_s` should hold the loop's horizon (tick interval + lead time) and
    `quantiles` the planning quantile, so both are calibrated directly. With
    `refit_of`, only the model that state chose is re-estimated (the cheap,
    frequent refit); otherwise `model` ("auto": full selection) is fitted.
    Run it in a worker (the loop's scheduler), never inside a tick.
    """
    from dataclasses import replace

    from forecast.mix import MixConfig
    from forecast.rate import RateForecastConfig, RateForecaster
    from forecast.series import series_from_windows, to_epoch

    now_s = to_epoch(now)
    cfg = replace(config or RateForecastConfig(), horizons_s=tuple(horizons_s), quantiles=tuple(quantiles))
    past = _past(history, now_s)
    if not past:
        raise ValueError("no demand window before now: nothing to fit")
    forecaster = RateForecaster(cfg, clock=clock)
    series = series_from_windows(past)
    if refit_of is not None:
        state = forecaster.refit(refit_of.rate, series)
        selected_at = refit_of.selected_at
    else:
        state = forecaster.fit(series, model=model)
        selected_at = now_s
    return DemandState(rate=state, mix_config=mix_config or refit_of and refit_of.mix_config or MixConfig(),
                       fitted_at=now_s, selected_at=selected_at, details={"method": state.method, "fit_seconds": round(state.fit_seconds, 3),
                                "scores": state.scores, "notes": list(state.notes)})


def fit_due(state: DemandState | None, now: datetime | float, refit_every_s: float = 3600.0,
            reselect_every_s: float = 86400.0, needs_refit: bool = False) -> str | None:
    """What the scheduler should run now: "select" (full), "refit" (chosen model only) or None.

    `needs_refit` is the last forecast's `details["needs_refit"]` (a level shift,
    or history that no longer reaches the fit): refit early rather than wait.
    """
    from forecast.series import to_epoch

    now_s = to_epoch(now)
    if state is None or state.rate.method == "recent_peak" and now_s - state.fitted_at >= refit_every_s:
        return "select"
    if now_s - state.selected_at >= reselect_every_s:
        return "select"
    if needs_refit or now_s - state.fitted_at >= refit_every_s:
        return "refit"
    return None


def forecast_demand(history: Sequence[DemandWindow], now: datetime | float, horizon_s: float, quantile: float,
                    state: DemandState | None = None, *, service: str | None = None) -> DemandForecast:
    """The cheap half: the `quantile` of the request rate at now + horizon_s and the mix to plan for."""
    from forecast.mix import MixConfig, estimate_mix
    from forecast.rate import FittedRate, RateForecastConfig, predict
    from forecast.series import from_epoch, series_from_windows, to_epoch

    now_s = to_epoch(now)
    at = now if isinstance(now, datetime) else from_epoch(now_s)
    past = _past(history, now_s)
    name = service or (past[0].service if past else "")
    if not past:
        return DemandForecast(name, at, horizon_s, 0.0, (), "no_data", quantile, {"reason": "no demand window yet"})
    series = series_from_windows(past)
    if state is None:
        rate_state = FittedRate("recent_peak", None, series.step_s, 0.0, 0, config=RateForecastConfig(),
                                notes=("no fitted state yet",))
        mix_cfg = MixConfig()
    else:
        rate_state, mix_cfg = state.rate, state.mix_config or MixConfig()
    rq = predict(rate_state, series, now_s, horizon_s, quantile)
    mix = estimate_mix(past, now_s, mix_cfg)
    details = {
        "point_rps": rq.point, "lo_rps": rq.lo, "target_start": from_epoch(rq.target_start).isoformat(),
        "level_shift": rq.level_shift, "needs_refit": rq.needs_refit,
        "mix_shift": mix.shift, "mix_tv": round(mix.tv_distance, 4), "mix_memory": mix.memory,
        **rq.details,
    }
    return DemandForecast(name, at, horizon_s, rq.rate, mix.joint, rq.method, quantile, details)
