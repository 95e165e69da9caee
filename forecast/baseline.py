"""Baseline forecast: recent peak rate and recent size mix.

Scale up fast, down slowly (SkyServe's hysteresis, BACKGROUND §3): the rate is
the peak of the last `peak_window_s` of observed windows, so one busy minute
raises the fleet at once, while a quiet spell lowers it only after the whole
look-back has been quiet.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from daemon.domain import BucketGrid, DemandForecast, DemandWindow, zeros
from forecast.series import to_epoch
from forecast.windows import windows_since


def recent_mix(history: list[DemandWindow], grid: BucketGrid):
    if not history:
        return zeros(grid.n_input, grid.n_output)
    totals = np.sum([np.asarray(w.counts, dtype=float) for w in history], axis=0)
    n = float(totals.sum())
    if n <= 0:
        return zeros(grid.n_input, grid.n_output)
    return tuple(tuple(float(c) / n for c in row) for row in totals)


def recent_peak(history: list[DemandWindow], service: str, now: datetime, horizon_s: float,
                grid: BucketGrid, peak_window_s: float) -> DemandForecast:
    """The peak of the windows starting in the last `peak_window_s`, and the last hour's mix.

    `history` in start order is cut by binary search (forecast.windows): the
    loop calls this every tick on days of windows.
    """
    now_s = to_epoch(now)
    recent = windows_since(history, now_s - peak_window_s)
    peak = max((w.rate for w in recent), default=0.0)
    mix_from = now_s - max(peak_window_s, 3600.0)  # the last hour's mix at least
    mix_wins = recent if mix_from >= now_s - peak_window_s else windows_since(history, mix_from)
    return DemandForecast(
        service=service, at=now, horizon_s=horizon_s, rate_rps=peak,
        mix=recent_mix(mix_wins, grid),
        method="recent_peak", quantile=1.0,
        details={"windows": len(recent), "peak_window_s": peak_window_s},
    )
