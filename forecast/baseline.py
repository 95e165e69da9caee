"""Baseline forecast: recent peak rate and recent size mix.

Scale up fast, down slowly (SkyServe's hysteresis, BACKGROUND §3): the rate is
the peak of the last `peak_window_s` of observed windows, so one busy minute
raises the fleet at once, while a quiet spell lowers it only after the whole
look-back has been quiet.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from daemon.domain import BucketGrid, DemandForecast, DemandWindow, zeros


def recent_mix(history: list[DemandWindow], grid: BucketGrid):
    totals = [[0.0] * grid.n_output for _ in range(grid.n_input)]
    n = 0.0
    for w in history:
        for i, row in enumerate(w.counts):
            for j, c in enumerate(row):
                totals[i][j] += c
                n += c
    if n <= 0:
        return zeros(grid.n_input, grid.n_output)
    return tuple(tuple(c / n for c in row) for row in totals)


def _since(history: list[DemandWindow], t: datetime) -> list[DemandWindow]:
    """The windows starting at or after `t`; `history` is in time order, so only its tail is read."""
    k = len(history)
    while k > 0 and history[k - 1].start >= t:
        k -= 1
    return history[k:]


def recent_peak(history: list[DemandWindow], service: str, now: datetime, horizon_s: float,
                grid: BucketGrid, peak_window_s: float) -> DemandForecast:
    """`history` in time order (as the loop keeps it); every tick reads only its recent end."""
    recent = _since(history, now - timedelta(seconds=peak_window_s))
    peak = max((w.rate for w in recent), default=0.0)
    mix_from = now - timedelta(seconds=max(peak_window_s, 3600.0))  # the last hour's mix at least
    return DemandForecast(
        service=service, at=now, horizon_s=horizon_s, rate_rps=peak,
        mix=recent_mix(_since(history, mix_from), grid),
        method="recent_peak", quantile=1.0,
        details={"windows": len(recent), "peak_window_s": peak_window_s},
    )
