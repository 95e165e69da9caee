"""The tail of a demand history by binary search, and the loop's recent-peak floor on it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from daemon.domain import BucketGrid, DemandWindow
from forecast.baseline import recent_peak
from forecast.windows import windows_since

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
GRID = BucketGrid((0, 256, 4096), (0, 64, 4096))


def wins(n: int, every_s: float = 60.0) -> list[DemandWindow]:
    return [DemandWindow("s", T0 + timedelta(seconds=i * every_s), every_s, ((float(i), 1.0), (0.0, 2.0)))
            for i in range(n)]


def test_windows_since_matches_a_full_scan_sorted_or_not():
    h = wins(500)
    cut = h[400].start_s - 30
    want = [w for w in h if w.start_s >= cut]
    assert windows_since(h, cut) == want and len(want) == 100
    assert windows_since(h, h[-1].start_s + 1) == []
    assert windows_since(h, 0) == h
    # ended by a time: the last window has not
    assert windows_since(h, cut, h[-1].start_s + 30) == want[:-1]
    # out of order near the cut (a late window appended at the end): the full scan still finds it
    late = h + [DemandWindow("s", h[10].start, 60.0, ((1.0, 0.0), (0.0, 0.0)))]
    assert windows_since(late, h[5].start_s) == [w for w in late if w.start_s >= h[5].start_s]
    shuffled = h[::-1]
    assert sorted(windows_since(shuffled, cut), key=lambda w: w.start_s) == want


def test_recent_peak_reads_the_last_window_span_only():
    h = wins(600)
    now = h[-1].start + timedelta(seconds=60)
    fc = recent_peak(h, "s", now, 360.0, GRID, peak_window_s=1200.0)
    assert fc.details["windows"] == 20 and fc.rate_rps == (599.0 + 3.0) / 60.0
    # the mix is the last hour's: counts (i, 1, 0, 2) for i in 540..599
    n = sum(i + 3.0 for i in range(540, 600))
    assert fc.mix[0][0] == sum(range(540, 600)) / n and fc.mix[1][1] == 120.0 / n
    assert recent_peak([], "s", now, 360.0, GRID, 1200.0).mix == ((0.0, 0.0), (0.0, 0.0))
