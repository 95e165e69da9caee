"""Rate forecaster: the statsmodels candidates, calibration, fallbacks, gaps, shifts, budget, real data."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from daemon.domain import DemandWindow
from forecast import fit_demand, forecast_demand
from forecast.backtest import backtest
from forecast.models import CANDIDATES, FitContext, HoltWinters, fill_gaps
from forecast.rate import RateForecastConfig, RateForecaster, predict, recent_peak
from forecast.series import RateSeries, series_from_points, series_from_windows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"
POOL = DATA / "servegen" / "servegen_pool_rates_10min.csv"
STEP = 600.0
P = 144


def daily_series(days: float, noise: float = 0.05, seed: int = 0, level: float = 100.0) -> RateSeries:
    """Synthetic input: a daily cycle times multiplicative noise (the test's world, not our logic)."""
    n = int(days * P)
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    rate = level * np.exp(0.6 * np.sin(2 * np.pi * t / P) + rng.normal(0, noise, n))
    return RateSeries(0.0, STEP, rate)


FAST = RateForecastConfig(candidates=("last_value", "seasonal_naive", "holt_winters"), horizons_s=(1800.0,),
                          max_origins=48, budget_s=60.0)


def test_holt_winters_recursion_matches_statsmodels():
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    rng = np.random.default_rng(1)
    period, n = 24, 24 * 8
    z = np.sin(2 * np.pi * np.arange(n) / period) + np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 0.1, n)
    hw = HoltWinters()
    i0 = 1000
    p = hw.fit(z[: n - 30], i0, FitContext(period, 7 * period))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ExponentialSmoothing(z[: n - 30], trend="add", damped_trend=True, seasonal="add", seasonal_periods=period,
                                   initialization_method="estimated").fit()
    assert [hw.point(p, z[: n - 30], i0, k) for k in range(1, 6)] == pytest.approx(list(res.forecast(5)), rel=1e-9)
    # 30 more windows folded in with fixed parameters == statsmodels run over them with the same parameters
    known = ExponentialSmoothing(z, trend="add", damped_trend=True, seasonal="add", seasonal_periods=period,
                                 initialization_method="known", initial_level=res.params["initial_level"],
                                 initial_trend=res.params["initial_trend"],
                                 initial_seasonal=res.params["initial_seasons"])
    r2 = known.fit(smoothing_level=res.params["smoothing_level"], smoothing_trend=res.params["smoothing_trend"],
                   smoothing_seasonal=res.params["smoothing_seasonal"], damping_trend=res.params["damping_trend"],
                   optimized=False)
    assert [hw.point(p, z, i0, k) for k in range(1, 4)] == pytest.approx(list(r2.forecast(3)), rel=1e-9)


def test_fill_gaps_uses_the_same_phase_a_day_earlier():
    z = np.arange(10.0)
    z[7] = np.nan
    assert fill_gaps(z, 5)[7] == 2.0
    z2 = np.array([np.nan, 1.0, np.nan, 3.0])
    assert list(fill_gaps(z2, 10)) == [1.0, 1.0, 2.0, 3.0]


def test_windows_with_gaps_become_nan_not_zero():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    wins = [DemandWindow("s", t0 + timedelta(minutes=m), 60.0, ((float(m),),)) for m in (0, 1, 4)]
    s = series_from_windows(wins)
    assert len(s) == 5 and s.step_s == 60.0
    assert np.isnan(s.values[2]) and np.isnan(s.values[3])
    assert s.values[4] == pytest.approx(4 / 60)
    # an observed window with no request is a real zero
    wins.append(DemandWindow("s", t0 + timedelta(minutes=2), 60.0, ((0.0,),)))
    assert series_from_windows(wins).values[2] == 0.0
    # coarser grid: a 5-minute window needs half of its minutes observed
    assert len(series_from_points([0, 60, 120], [1, 2, 3], 60).resample(300)) == 0  # unfinished
    r = series_from_points(np.arange(10) * 60.0, [1, 1, np.nan, np.nan, np.nan, 2, 2, 2, 2, np.nan], 60).resample(300)
    assert np.isnan(r.values[0]) and r.values[1] == 2.0


def test_short_history_uses_robust_recent_peak():
    s = series_from_points(np.arange(30) * 60.0, [10.0] * 20 + [12.0] * 9 + [500.0], 60)
    st = RateForecaster().fit(s)
    assert st.method == "recent_peak"
    f = predict(st, s, s.end, 360, 0.9)
    assert f.method == "recent_peak"
    # the single 500 burst does not set the peak; the recent level does
    assert 12.0 <= f.rate < 20.0
    peak, med = recent_peak(s, s.end, 0.9, 3600)
    assert peak == f.rate and med == 12.0


def test_seasonal_series_picks_a_seasonal_model_and_is_calibrated():
    s = daily_series(6, noise=0.03)
    st = RateForecaster(FAST).fit(s.until(5 * 86400))
    assert st.method == "holt_winters", st.scores
    assert st.scores["seasonal_naive"]["pinball_log"] < st.scores["last_value"]["pinball_log"]
    # out of sample, the last day: coverage of the p90 near 0.9, and far better than last value
    r_hw = backtest(s, "holt_winters", 1800, 0.9, test_days=1, refit_every_s=86400, config=FAST)
    r_lv = backtest(s, "last_value", 1800, 0.9, test_days=1, refit_every_s=86400, config=FAST)
    assert 0.75 <= r_hw.coverage <= 1.0
    assert r_hw.pinball < 0.75 * r_lv.pinball
    assert r_hw.predict_ms_max < 100


def test_gaps_do_not_drag_the_forecast_to_zero():
    s = daily_series(6, noise=0.03)
    v = s.values.copy()
    v[4 * P : 4 * P + 30] = np.nan  # a collection gap of 5 hours
    v[-P // 2 : -P // 2 + 6] = np.nan
    g = RateSeries(s.t0, s.step_s, v)
    st = RateForecaster(FAST).fit(g)
    f = predict(st, g, g.end, 1800, 0.9)
    truth = 100 * math.exp(0.6 * math.sin(2 * math.pi * (len(v) + 2) / P))
    assert f.point == pytest.approx(truth, rel=0.15)


def test_level_shift_is_detected_and_lifts_the_forecast():
    s = daily_series(6, noise=0.02)
    st = RateForecaster(FAST).fit(s.until(5.5 * 86400))
    v = s.values.copy()
    cut = int(5.9 * P)
    v[cut:] *= 3.0  # a big client arrives
    shifted = RateSeries(s.t0, s.step_s, v)
    now = s.t0 + (cut + 4) * STEP
    f = predict(st, shifted, now, 1800, 0.9)
    assert f.level_shift and f.needs_refit and f.details["level_shift"] == "up"
    last = v[cut + 3]
    assert f.rate >= 0.9 * last
    quiet = predict(st, s, now, 1800, 0.9)
    assert not quiet.level_shift


def test_fit_respects_the_time_budget():
    ticks = iter(range(0, 10_000, 10))  # every clock read advances 10 s
    cfg = replace(FAST, budget_s=5.0)
    st = RateForecaster(cfg, clock=lambda: float(next(ticks))).fit(daily_series(4))
    statuses = {k: v["status"] for k, v in st.scores.items()}
    assert statuses["last_value"] == "ok"
    assert statuses["seasonal_naive"].startswith("skipped: time budget")
    assert statuses["holt_winters"].startswith("skipped: time budget")


def test_predict_is_pure_and_reads_only_windows_before_now():
    s = daily_series(5)
    st = RateForecaster(FAST).fit(s.until(4 * 86400))
    now = s.t0 + 4.5 * 86400
    a = predict(st, s, now, 1800, 0.9)
    b = predict(st, s.until(now), now, 1800, 0.9)  # the future in `s` is ignored
    assert a == b
    assert a.lo <= a.point <= a.rate
    assert predict(st, s, now, 1800, 0.5).rate == pytest.approx(a.point, rel=1e-9)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        RateForecaster().fit(daily_series(3), model="nope")


def test_every_candidate_fits_and_predicts_on_real_servegen_slice():
    if not POOL.exists():
        pytest.skip(f"shared data missing: {POOL}")
    from forecast.sources.rate_csv import read_servegen_pool

    s = read_servegen_pool(POOL, "model=m-mid")
    s = s.until(s.t0 + 6 * 86400)  # m-mid has collection gaps at hours 87-89 and 132: inside this slice
    assert np.isnan(s.values).sum() > 0
    cfg = RateForecastConfig(horizons_s=(1800.0,), max_origins=24, budget_s=120.0)
    st = RateForecaster(cfg).fit(s)
    ok = {k for k, v in st.scores.items() if v["status"] == "ok"}
    assert ok == set(CANDIDATES), st.scores
    assert st.method in CANDIDATES
    for name in CANDIDATES:
        if name == "ensemble":
            continue
        one = RateForecaster(replace(cfg, candidates=(name,))).fit(s, model=name)
        f = predict(one, s, s.end, 1800, 0.9)
        assert f.method == name
        assert 0 < f.point <= f.rate < 10 * np.nanmax(s.values)


def test_backtest_on_real_m_large_small_slice():
    if not POOL.exists():
        pytest.skip(f"shared data missing: {POOL}")
    from forecast.sources.rate_csv import read_servegen_pool

    s = read_servegen_pool(POOL, {"model": "m-large"})
    s = s.until(s.t0 + 5 * 86400)
    cfg = RateForecastConfig(candidates=("last_value", "seasonal_naive", "holt_winters"), max_origins=48)
    r = backtest(s, "auto", 1800, 0.9, test_days=0.5, refit_every_s=43200, config=cfg)
    assert r.n == 72
    assert 0.7 <= r.coverage <= 1.0
    assert set(r.metrics()) == {"mase", "smape", "pinball", "coverage"}
    sn = backtest(s, "seasonal_naive", 1800, 0.9, test_days=0.5, refit_every_s=43200, config=cfg)
    # on this pool the day-to-day level swings: yesterday's window is a poor forecast of 30 minutes ahead
    assert r.pinball < sn.pinball


def test_forecast_demand_end_to_end_from_windows():
    t0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
    s = daily_series(3.5)
    wins = [DemandWindow("chat", t0 + timedelta(seconds=i * STEP), STEP,
                         ((v * STEP * 0.7, v * STEP * 0.1), (v * STEP * 0.2, 0.0)))
            for i, v in enumerate(s.values)]
    now = wins[-1].start + timedelta(seconds=STEP)
    cold = forecast_demand(wins, now, 360, 0.9)
    assert cold.method == "recent_peak" and cold.rate_rps > 0
    state = fit_demand(wins, now, horizons_s=(360.0,), quantiles=(0.9,),
                       config=RateForecastConfig(candidates=("last_value", "seasonal_naive", "holt_winters")))
    assert state.history_since() <= now - timedelta(days=3)
    fc = forecast_demand(wins, now, 360, 0.9, state)
    assert fc.service == "chat" and fc.quantile == 0.9 and fc.horizon_s == 360
    assert fc.method == state.rate.method
    assert sum(map(sum, fc.mix)) == pytest.approx(1.0)
    assert fc.mix[0][0] == pytest.approx(0.7, abs=0.02)
    assert fc.rate_rps >= fc.details["point_rps"] > 0
    assert forecast_demand([], now, 360, 0.9, service="x").method == "no_data"


def test_fit_schedule_and_cheap_refit():
    from forecast import fit_due

    t0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
    s = daily_series(4)
    wins = [DemandWindow("chat", t0 + timedelta(seconds=i * STEP), STEP, ((v * STEP,),)) for i, v in enumerate(s.values)]
    now = wins[-1].start + timedelta(seconds=STEP)
    cfg = RateForecastConfig(candidates=("last_value", "seasonal_naive", "holt_winters", "mstl_arima", "ensemble"))
    assert fit_due(None, now) == "select"
    st = fit_demand(wins, now, config=cfg)
    assert fit_due(st, now) is None
    assert fit_due(st, now + timedelta(minutes=10), needs_refit=True) == "refit"
    assert fit_due(st, now + timedelta(hours=1)) == "refit"
    assert fit_due(st, now + timedelta(days=1)) == "select"
    again = fit_demand(wins, now + timedelta(hours=1), config=cfg, refit_of=st)
    assert again.rate.method == st.rate.method and again.selected_at == st.selected_at
    fitted = {k for k, v in again.rate.scores.items() if v["status"] == "ok"}
    if st.rate.method == "ensemble":
        assert fitted == {n for n, _ in st.rate.params.members} | {"ensemble"}
    else:
        assert fitted == {st.rate.method}
