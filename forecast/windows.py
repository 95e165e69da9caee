"""The tail of a service's demand history, found by binary search.

The loop keeps each service's DemandWindows in start order (the store returns
them so and the loop appends each tick's new ones), and a tick needs only the
last hour or so of days of them. Scanning days of windows in Python every tick
was most of the replay's forecast time (issue 15); bisecting costs microseconds.
A history found out of order (its ends, or anywhere after the cut) is scanned in
full instead; disorder further back, before the cut, is not looked for.
"""

from __future__ import annotations

import bisect
import operator
from typing import Sequence

from daemon.domain import DemandWindow

_START = operator.attrgetter("start_s")


def windows_since(history: Sequence[DemandWindow], since_s: float, until_s: float | None = None) -> list[DemandWindow]:
    """Windows with start_s >= since_s (and, with `until_s`, ended by then), in history order."""
    n = len(history)
    tail = None
    if n > 32 and isinstance(history, (list, tuple)):
        i = bisect.bisect_left(history, since_s, key=_START)
        cand = history[i:]
        starts = [w.start_s for w in cand]
        ordered_ends = history[0].start_s <= history[-1].start_s
        if ordered_ends and (i == 0 or history[i - 1].start_s < since_s) and all(
                a <= b for a, b in zip(starts, starts[1:])):
            tail = cand
    if tail is None:
        tail = [w for w in history if w.start_s >= since_s]
    if until_s is None:
        return list(tail)
    return [w for w in tail if w.start_s + w.seconds <= until_s + 1e-6]
