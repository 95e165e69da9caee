"""Aimed crashes for the crash campaign: `FLEET_CRASH_AT=<point>:<n>` kills fleetd at the n-th pass.

The campaign (tests/test_crash_campaign.py, bench/crash_campaign.py) has to kill
the daemon at named moments of a tick (before and after each transaction,
between an intent and its provider call, in the middle of apply, during a
refit), not only at random times. The tick marks those moments with
`crashpoint.hit("record.after_commit")`; with `FLEET_CRASH_AT=record.after_commit:3`
in the environment, the third pass through that point sends SIGKILL to the
process itself (no cleanup, no atexit, no flush: what a power cut or the OOM
killer does).

The variable is read once, when this module is imported. Unset (every normal
run) `hit` is a function that returns at once: one call, no lookup. It is not a
configuration key: an operator never sees or sets it.
"""

from __future__ import annotations

import os
import signal

ENV = "FLEET_CRASH_AT"

# Every point the tick and the refit mark, in the order a tick passes them (the campaign aims at these).
POINTS = (
    "tick.start",
    "lease.after_refresh",
    "observe.after_list",
    "observe.before_commit",
    "observe.after_commit",
    "observe.after_cursor_commit",
    "record.before_commit",
    "record.after_commit",
    "apply.before_launch",
    "apply.after_launch",
    "apply.after_launch_result",
    "apply.before_terminate",
    "apply.after_terminate",
    "finish.before_commit",
    "finish.after_commit",
    "tick.end",
    "refit.during",
)


def _parse(value: str) -> tuple[str, int]:
    point, _, n = value.rpartition(":")
    if not point or not n.isdigit() or int(n) < 1:
        raise ValueError(f"{ENV}={value!r}: expected <point>:<n>, n >= 1 (points: {', '.join(POINTS)})")
    if point not in POINTS:
        raise ValueError(f"{ENV}={value!r}: unknown point {point!r} (points: {', '.join(POINTS)})")
    return point, int(n)


def _noop(point: str) -> None:
    return None


def _armed(target: str, n: int):
    seen = 0

    def hit(point: str) -> None:
        nonlocal seen
        if point != target:
            return
        seen += 1
        if seen >= n:
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


_value = os.environ.get(ENV)
hit = _armed(*_parse(_value)) if _value else _noop
