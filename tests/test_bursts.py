"""Bursts inside a demand window: measured where requests are seen, stored, and planned for.

A window's mean rate hides a clump of requests that arrive within a second or two; the
TTFT objective does not. Each source that sees single requests records the window's peak
rates over short slices, the store keeps them, and the planner carries the rate a window's
worst burst needs (domain.burst_need) when that is above the headroom.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from daemon.config import default_config
from daemon.demand.request_log import RequestRow
from daemon.demand.tail import RequestLogTail
from daemon.demand.windows import aggregate, windows_from_rows
from daemon.domain import BucketGrid, DemandForecast, DemandWindow, burst_need
from daemon.loop.decide import burst_factor, forecast_all
from daemon.plan.ilp import plan_ilp
from daemon.plan.inputs import ServiceDemand
from daemon.store.migrate import upgrade
from daemon.store.repo import Store

GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))
BASE = 1_700_000_040  # a minute boundary
ORIGIN = datetime.fromtimestamp(BASE, tz=timezone.utc)


def steady(n=120):
    return np.arange(n) * (60.0 / n)  # evenly spread over the minute


def clump(n=120, at=30.0):
    return np.concatenate([np.full(n // 2, at + 0.5), steady(n // 2)])  # half of it within one second


def window_of(t):
    t = np.asarray(t, dtype=float)
    return aggregate("chat", GRID, ORIGIN, 60.0, t, np.full(len(t), 100), np.full(len(t), 10), 0, 1)[0]


def test_peaks_see_a_clump_the_mean_rate_does_not():
    even, bursty = window_of(steady()), window_of(clump())
    assert even.rate == bursty.rate == 2.0
    assert dict(even.peaks)[1.0] == pytest.approx(2.0) and dict(even.peaks)[30.0] == pytest.approx(2.0)
    assert dict(bursty.peaks)[1.0] == pytest.approx(61.0)  # 60 in the clump's second + one of the steady ones
    # a fleet at the mean rate keeps an even window within a 2 s TTFT; the clump needs ~10x
    assert burst_need(even, 2.0) == pytest.approx(2.0)
    assert burst_need(bursty, 2.0) == pytest.approx(61.0 / 3.0)
    assert burst_need(DemandWindow("chat", ORIGIN, 60.0, ((0.0,),)), 2.0) is None  # nothing to size


def test_every_source_that_sees_requests_records_the_same_peaks(tmp_path):
    t = clump()
    from_trace = window_of(t)
    rows = [RequestRow(BASE + float(x), 100, 10, k + 1) for k, x in enumerate(t)]
    from_rows = windows_from_rows(rows, GRID, 60.0, "chat")
    p = tmp_path / "req.jsonl"
    p.write_text("".join(json.dumps({"timestamp": int((BASE + x) * 1000), "input_length": 100,
                                     "output_length": 10}) + "\n" for x in sorted(t)))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    poll = tail.poll(datetime.fromtimestamp(BASE + 61, tz=timezone.utc))
    assert len(from_rows) == 1 and len(poll.windows) == 1
    assert from_rows[0].peaks == from_trace.peaks
    flat = [x for pair in poll.windows[0].peaks for x in pair]
    assert flat == pytest.approx([x for pair in from_trace.peaks for x in pair], rel=0.02)  # the log keeps ms


def test_a_cursor_written_before_peaks_still_resumes(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_text("".join(json.dumps({"timestamp": (BASE + k) * 1000, "input_length": 100, "output_length": 10})
                         + "\n" for k in range(10)))
    tail = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    poll = tail.poll(datetime.fromtimestamp(BASE + 30, tz=timezone.utc))  # the minute is not over
    tail.commit(poll)
    old = json.loads(json.dumps(poll.cursor))
    for v in old["partial"].values():
        del v[3:]  # the layout before peaks: counts, input tokens, output tokens
    again = RequestLogTail("chat", p, GRID, 60.0, lateness_s=0.0)
    again.resume(old)
    wins = again.poll(datetime.fromtimestamp(BASE + 61, tz=timezone.utc)).windows
    assert [w.requests for w in wins] == [10] and wins[0].peaks == ()


def test_the_store_keeps_the_peaks(tmp_path):
    st = Store.open(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(st.engine)
    w = window_of(clump())
    with st.session() as s:
        Store.add_demand_windows(s, [w])
    with st.session() as s:
        back = Store.demand_history(s, "chat", GRID, ORIGIN - timedelta(hours=1))
    assert back[0].peaks == w.peaks and back[0].counts == w.counts


def history(make, n=20):
    return [make(ORIGIN + timedelta(minutes=k)) for k in range(n)]


def bursty_at(start):
    w = window_of(clump())
    return DemandWindow("chat", start, 60.0, w.counts, w.input_tokens, w.output_tokens, w.peaks)


def even_at(start):
    w = window_of(steady())
    return DemandWindow("chat", start, 60.0, w.counts, w.input_tokens, w.output_tokens, w.peaks)


def test_burst_factor_is_a_quantile_over_recent_windows_and_can_be_switched_off():
    now = ORIGIN + timedelta(minutes=20)
    mixed = history(even_at, 15) + [bursty_at(ORIGIN + timedelta(minutes=15 + k)) for k in range(5)]
    assert burst_factor(history(even_at), now, 1200.0, 2.0, 0.5) == pytest.approx(1.0)
    assert burst_factor(mixed, now, 1200.0, 2.0, 0.5) == pytest.approx(1.0)  # a quarter bursty: not the median
    assert burst_factor(mixed, now, 1200.0, 2.0, 0.9) == pytest.approx(61.0 / 3.0 / 2.0)
    assert burst_factor(mixed, now, 1200.0, 2.0, 0.0) is None
    assert burst_factor(mixed, now, 240.0, 2.0, 0.5) == pytest.approx(61.0 / 6.0)  # only the bursty ones are recent
    no_peaks = [DemandWindow(w.service, w.start, w.seconds, w.counts) for w in mixed]  # a counting source
    assert burst_factor(no_peaks, now, 1200.0, 2.0, 0.5) is None


def test_the_planner_carries_the_bursts_of_a_bursty_demand_and_not_of_a_steady_one():
    cfg = default_config()
    svc = cfg.services[0].name
    now = ORIGIN + timedelta(minutes=20)
    pol = cfg.policy.model_copy(update={"burst_quantile": 0.5})
    cfg = cfg.model_copy(update={"policy": pol})

    def replicas(windows):
        windows = [DemandWindow(svc, w.start, w.seconds, w.counts, w.input_tokens, w.output_tokens, w.peaks)
                   for w in windows]
        fc = forecast_all(cfg, {svc: windows}, now)[svc]
        sd = ServiceDemand(svc, fc, 0, ("A10G",), burst_factor=fc.details.get("burst_factor") or 1.0)
        return sd.planning_factor(pol.headroom), fc

    f_even, fc_even = replicas(history(even_at))
    f_burst, fc_burst = replicas(history(bursty_at))
    assert fc_even.rate_rps == pytest.approx(fc_burst.rate_rps)  # same mean demand
    assert f_even == pytest.approx(1.0 + pol.headroom)
    assert f_burst == pytest.approx(61.0 / 6.0, rel=1e-3)


def test_the_ilp_sizes_the_fleet_for_the_burst_factor():
    from tests.test_plan_ilp import make, off, policy, replicas

    def planned(factor):
        fc = DemandForecast("chat", ORIGIN, 360.0, 20.0, ((1.0,),), "test")
        sd = ServiceDemand("chat", fc, 0, ("A10G",), burst_factor=factor)
        return replicas(plan_ilp(make([off("A10G", 1.0)], demands=(sd,), pol=policy(headroom=0.4))))

    assert planned(1.0) == {"A10Gx1": 3}  # 20 req/s x 1.4 over 10 req/s per replica
    assert planned(3.0) == {"A10Gx1": 6}  # the burst factor, not the headroom, decides
