"""The baseline policies' own rules, on hand-made views; and the oracle against brute force."""

import itertools
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from daemon.config import parse_config
from daemon.domain import CapacityTable, DemandWindow, FleetInstance, Market, Offering
from daemon.lifecycle import Reason
from daemon.policies.base import (
    FleetEvent, PolicyView, qps_at_mix, recent_rate, scale_down_order, unservable_share,
)
from daemon.policies.held import StaticPolicy
from daemon.policies.skyserve import Hysteresis, ReactivePolicy, SpotHedgePolicy, SpotPlacer
from daemon.policies.workload import ServiceWorkload, utilization_target

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def _off(cloud, region, zone, gpu, market, price):
    return Offering(cloud, region, zone, f"{gpu}-vm", gpu, 1, Market(market), price)


OD_CHEAP = _off("lambda", "us-east-1", None, "H100", "on-demand", 3.29)
OD_DEAR = _off("gcp", "us-central1", "us-central1-a", "H100", "on-demand", 5.38)
SPOT_A = _off("azure", "eastus", None, "H100", "spot", 2.19)
SPOT_B = _off("gcp", "us-east4", "us-east4-a", "H100", "spot", 3.35)
SPOT_C = _off("gcp", "us-east4", "us-east4-b", "H100", "spot", 3.35)
OFFERS = (OD_CHEAP, OD_DEAR, SPOT_A, SPOT_B, SPOT_C)


def _window(start, requests, seconds=60.0):
    counts = [[0.0] * 4 for _ in range(4)]
    counts[1][1] = float(requests)
    return DemandWindow("chat", start, seconds, tuple(tuple(r) for r in counts))


def _history(now, rps, n=5):
    return [_window(now - timedelta(seconds=60 * (n - k)), rps * 60) for k in range(n)]


def _inst(iid, off, state, launched, ready=None):
    return FleetInstance(iid, iid, "chat", off, state, launched_at=launched, ready_at=ready)


def _view(cfg, now, rps, fleet=(), events=(), unavailable=frozenset()):
    cap = CapacityTable({("chat", "H100x1"): tuple(tuple(10.0 for _ in range(4)) for _ in range(4))})
    return PolicyView(cfg=cfg, now=now, history={"chat": _history(now, rps)}, fleet=tuple(fleet), offerings=OFFERS,
                      unavailable=frozenset(unavailable), events=tuple(events), capacity=cap)


def _cfg():
    return parse_config({"services": [{"name": "chat", "gpus": ["H100"], "min_replicas": 1}]})


# -- SkyServe's hysteresis ------------------------------------------------------------------------

def test_hysteresis_moves_up_after_300_s_and_down_after_1200_s_of_ticks():
    h = Hysteresis.for_tick(60.0)
    assert (h.up_threshold, h.down_threshold) == (5, 20)  # 300 s / 60 s, 1200 s / 60 s (SkyServe's 15 x 20 s, 60 x 20 s)
    assert h.update(2) == 2  # warm start: a running deployment already sits at its target
    assert [h.update(4) for _ in range(5)] == [2, 2, 2, 2, 4]
    assert [h.update(1) for _ in range(19)] == [4] * 19
    assert h.update(1) == 1


def test_hysteresis_counter_resets_when_the_raw_target_equals_the_target():
    h = Hysteresis.for_tick(60.0)
    h.update(3)
    for _ in range(4):
        h.update(5)
    h.update(3)  # equal: both counters back to 0
    assert [h.update(5) for _ in range(5)] == [3, 3, 3, 3, 5]


# -- the placer -----------------------------------------------------------------------------------

def test_placer_prefers_the_cheapest_unused_active_location():
    p = SpotPlacer({o.location: o for o in (SPOT_A, SPOT_B, SPOT_C)})
    assert p.select([]) is SPOT_A
    assert p.select([SPOT_A.location]).location in (SPOT_B.location, SPOT_C.location)
    # every active location in use: the cheapest active again
    assert p.select([SPOT_A.location, SPOT_B.location, SPOT_C.location]) is SPOT_A


def test_placer_marks_preempted_and_resets_below_two_active():
    p = SpotPlacer({o.location: o for o in (SPOT_A, SPOT_B, SPOT_C)})
    p.set_preempted(SPOT_A.location)
    assert p.select([]) in (SPOT_B, SPOT_C)
    p.set_preempted(SPOT_B.location)  # one active left: all reset to active
    assert all(p.active.values())
    p.set_preempted(SPOT_A.location)
    p.set_active(SPOT_A.location)
    assert p.select([]) is SPOT_A


# -- reactive ---------------------------------------------------------------------------------------

def test_reactive_targets_ceil_qps_over_target_on_the_cheapest_on_demand():
    cfg = _cfg()
    pol = ReactivePolicy(cfg, {"chat": "H100"}, {"chat": 4.0})
    d = pol.decide(_view(cfg, T0, rps=9.0))  # ceil(9 / 4) = 3
    assert d.plan.targets == {("chat", OD_CHEAP.key): 3}
    assert {r.pool for r in d.plan.routes} == {"H100x1"} and len(d.plan.routes) == 4  # one-pool table
    # the cheapest in back-off: the next one
    pol2 = ReactivePolicy(cfg, {"chat": "H100"}, {"chat": 4.0})
    d2 = pol2.decide(_view(cfg, T0, rps=9.0, unavailable={OD_CHEAP.key}))
    assert d2.plan.targets == {("chat", OD_DEAR.key): 3}


def test_reactive_scale_down_removes_the_least_advanced_newest_first():
    cfg = _cfg()
    pol = ReactivePolicy(cfg, {"chat": "H100"}, {"chat": 4.0})
    old = T0 - timedelta(hours=2)
    fleet = [_inst("a", OD_DEAR, "running", old, old), _inst("b", OD_CHEAP, "running", old + timedelta(minutes=5)),
             _inst("c", OD_CHEAP, "provisioning", T0 - timedelta(minutes=1))]
    pol.hyst["chat"].target = 3
    for k in range(20):  # 1200 s below target
        d = pol.decide(_view(cfg, T0 + timedelta(minutes=k), rps=3.0, fleet=fleet))
    # target 1: the provisioning one goes first, then the newer running one; the oldest stays
    assert d.plan.targets == {("chat", OD_DEAR.key): 1}
    assert [i.id for i in scale_down_order(fleet, T0)] == ["c", "b", "a"]


# -- spothedge --------------------------------------------------------------------------------------

def test_spothedge_overprovisions_spot_and_falls_back_on_demand_for_unready_spot():
    cfg = _cfg()
    pol = SpotHedgePolicy(cfg, {"chat": "H100"}, {"chat": 4.0})
    d = pol.decide(_view(cfg, T0, rps=7.0))  # target 2: spot 2 + 1, on-demand min(3 - 0 ready, 2) = 2
    spot = {k: n for (_, k), n in d.plan.targets.items() if k.endswith("/spot")}
    od = {k: n for (_, k), n in d.plan.targets.items() if k.endswith("/on-demand")}
    assert sum(spot.values()) == 3 and len(spot) == 3  # one per location: SpotHedge spreads
    assert od == {OD_CHEAP.key: 2}
    # all three spot replicas ready: no fallback left
    fleet = [_inst(f"s{k}", o, "running", T0, T0) for k, o in enumerate((SPOT_A, SPOT_B, SPOT_C))]
    fleet += [_inst("o1", OD_CHEAP, "running", T0, T0), _inst("o2", OD_CHEAP, "running", T0, T0)]
    d = pol.decide(_view(cfg, T0 + timedelta(minutes=1), rps=7.0, fleet=fleet))
    assert d.plan.targets.get(("chat", OD_CHEAP.key), 0) == 0
    assert sum(n for (_, k), n in d.plan.targets.items() if k.endswith("/spot")) == 3


def test_spothedge_avoids_a_location_after_a_preemption_until_a_launch_there_succeeds():
    cfg = _cfg()
    pol = SpotHedgePolicy(cfg, {"chat": "H100"}, {"chat": 100.0}, num_overprovision=0)
    pol.decide(_view(cfg, T0, rps=1.0))
    lost = FleetEvent(T0, Reason.PREEMPTED, "x", "chat", SPOT_A.location, Market.SPOT, SPOT_A.key)
    d = pol.decide(_view(cfg, T0 + timedelta(minutes=1), rps=1.0, events=[lost]))
    spot = [k for (_, k), n in d.plan.targets.items() if k.endswith("/spot") and n]
    assert spot and SPOT_A.key not in spot
    ok = FleetEvent(T0, Reason.BECAME_READY, "y", "chat", SPOT_A.location, Market.SPOT, SPOT_A.key)
    pol.decide(_view(cfg, T0 + timedelta(minutes=2), rps=1.0, events=[ok]))
    assert pol.placers["chat"].active[SPOT_A.location]


def test_spothedge_failed_launch_marks_the_location():
    cfg = _cfg()
    pol = SpotHedgePolicy(cfg, {"chat": "H100"}, {"chat": 100.0})
    pol.decide(_view(cfg, T0, rps=1.0))
    fail = FleetEvent(T0, Reason.NO_CAPACITY, "x", "chat", SPOT_B.location, Market.SPOT, SPOT_B.key)
    pol.decide(_view(cfg, T0 + timedelta(minutes=1), rps=1.0, events=[fail]))
    assert pol.placers["chat"].active[SPOT_B.location] is False


# -- static and the shared sizing -------------------------------------------------------------------

def test_static_holds_ceil_peak_over_qps_target():
    cfg = _cfg()
    counts = np.zeros((3, 4, 4))
    counts[:, 1, 1] = [60, 600, 120]  # peak 10 req/s
    wl = {"chat": ServiceWorkload("chat", 60.0, counts)}
    pol = StaticPolicy(cfg, {"chat": "H100"}, {"chat": 3.0}, wl)
    d = pol.decide(_view(cfg, T0, rps=0.5))
    assert d.plan.targets == {("chat", OD_CHEAP.key): 4}  # ceil(10 / 3)


def test_qps_at_mix_is_the_harmonic_mean_of_maxtput_and_skips_unservable_cells():
    tput = ((10.0, 0.0), (2.0, 1.0))
    mix = ((0.5, 0.0), (0.5, 0.0))
    assert qps_at_mix(tput, mix) == pytest.approx(1.0 / (0.5 / 10 + 0.5 / 2))
    assert unservable_share(tput, ((0.5, 0.2), (0.3, 0.0))) == pytest.approx(0.2)
    assert utilization_target(0.2) == pytest.approx(1 / 1.2)


def test_recent_rate_is_the_last_qps_window_of_observed_demand():
    now = T0
    hist = [_window(now - timedelta(seconds=150), 600), _window(now - timedelta(seconds=90), 120)]
    # the latest finished window ends 30 s before now: it alone is the last 60 s
    assert recent_rate(hist, now, 60.0) == pytest.approx(2.0)
    assert recent_rate(hist, now - timedelta(seconds=60), 60.0) == pytest.approx(10.0)
    assert recent_rate([], now, 60.0) == 0.0


# -- the oracle -------------------------------------------------------------------------------------

def _oracle_cfg(spot=False, **sim):
    return parse_config({
        "loop": {"window_s": 60, "tick_interval_s": 60},
        "provider": {"simulated": {"launch_latency_s": [120, 300], "spot_preemptions_per_hour": 0.0, **sim}},
        "services": [{"name": "chat", "gpus": ["A10G", "H100"], "min_replicas": 1}],
        "policy": {"spot": spot},
    })


def _brute(prices, loads, min_rep, cap=8):
    """Cheapest integer y (per pool) such that shares routing every bucket fit (LP by enumeration of y)."""
    from scipy.optimize import linprog

    P = len(prices)
    best = math.inf
    for y in itertools.product(range(cap + 1), repeat=P):
        if sum(y) < min_rep:
            continue
        c = float(np.dot(prices, y))
        if c >= best:
            continue
        K = loads.shape[0]
        # feasibility: q_kp >= 0, sum_p q_kp = 1, sum_k L_kp q_kp <= y_p
        A_eq = np.zeros((K, K * P))
        for k in range(K):
            A_eq[k, k * P:(k + 1) * P] = 1
        A_ub = np.zeros((P, K * P))
        bounds = []
        for k in range(K):
            for p in range(P):
                A_ub[p, k * P + p] = loads[k, p] if np.isfinite(loads[k, p]) else 0
                bounds.append((0, 0 if not np.isfinite(loads[k, p]) else 1))
        r = linprog(np.zeros(K * P), A_ub=A_ub, b_ub=np.array(y, float), A_eq=A_eq, b_eq=np.ones(K), bounds=bounds)
        if r.status == 0:
            best = c
    return best


def test_window_program_matches_brute_force():
    from daemon.policies.oracle import _WindowMIP

    rng = np.random.default_rng(3)
    for _ in range(25):
        P, K = 3, 3
        prices = rng.uniform(0.5, 5.0, P)
        loads = rng.uniform(0.0, 2.5, (K, P))
        loads[rng.random((K, P)) < 0.2] = np.inf
        loads[:, 0] = rng.uniform(0.1, 2.5, K)  # pool 0 serves everything: always feasible
        mip = _WindowMIP(P, K, 1)
        y, q, cost = mip.solve(prices, loads)
        assert cost == pytest.approx(_brute(prices, loads, 1), rel=1e-9)
        assert np.allclose(q.sum(axis=1), 1.0, atol=1e-6)
        used = np.where(np.isfinite(loads), loads, 0.0) * q
        assert np.all(used.sum(axis=0) <= y + 1e-6)


def test_oracle_costs_each_window_at_its_optimum_and_builds_a_judgeable_schedule():
    from daemon.capacity import capacity_table
    from daemon.judge import JudgeInputs, Requests, judge
    from daemon.judge.store_adapter import services_from_config
    from daemon.policies.oracle import compute_oracle

    cfg = _oracle_cfg()
    cap = capacity_table(cfg)
    counts = np.zeros((30, 4, 4))
    counts[:10, 0, 0] = 60  # 1 req/s of short requests
    counts[10:20, 1, 1] = 6000  # 100 req/s of medium ones
    wl = {"chat": ServiceWorkload("chat", 60.0, counts)}
    res = compute_oracle(cfg, wl, T0, T0 - timedelta(seconds=600), cap)
    # Independently: one demanded cell per window, so a fleet carries it when sum_p y_p MaxTput_p >= rate.
    od = {"A10Gx1": 1.006, "H100x1": 3.29}  # the cheapest on-demand of each pool in the bundled table
    t = {p: cap.get("chat", p) for p in od}

    def best(i, j, rate):
        return min(od["A10Gx1"] * a + od["H100x1"] * b for a in range(60) for b in range(20)
                   if a + b >= 1 and a * t["A10Gx1"][i][j] + b * t["H100x1"][i][j] >= rate - 1e-9)

    expect = (10 * best(0, 0, 1.0) + 10 * best(1, 1, 100.0) + 10 * best(0, 0, 0.0)) * 60 / 3600
    assert res.cost_usd == pytest.approx(expect, rel=1e-6)
    assert res.windows == 30 and res.unserved_requests == 0
    # the schedule is valid input for the judge
    per = counts.sum(axis=(1, 2)).astype(int)
    t = np.sort(np.repeat(np.arange(30) * 60.0, per) + np.random.default_rng(0).uniform(0, 60, per.sum())) \
        + T0.timestamp()
    sizes = np.where(t - T0.timestamp() < 600, 100, 500)
    outs = np.where(t - T0.timestamp() < 600, 30, 100)
    req = Requests.build(t, sizes, outs, "chat")
    v = judge(JudgeInputs(req, res.fleet, res.routing, cfg.buckets.grid(), services_from_config(cfg)))
    assert v.attainment() > 0.95  # Poisson-like arrivals at the table's MaxTput, zero headroom


def test_oracle_uses_spot_only_where_capacity_lasts_from_the_launch_lead_to_the_window_end(tmp_path):
    import json

    from daemon.capacity import capacity_table
    from daemon.policies.oracle import compute_oracle

    # A spot trace for every AWS zone of the bundled table: available, except [1800, 2400) s.
    data = [1] * 6 + [0] * 2 + [1] * 40  # 300-s ticks
    for zone in ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f",
                 "us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"):
        (tmp_path / f"{zone}_v100_1.json").write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": data}))
    cfg = _oracle_cfg(spot=True, spot_trace_dir=str(tmp_path), clouds=["aws"])
    cap = capacity_table(cfg)
    counts = np.zeros((60, 4, 4))
    counts[:, 0, 0] = 60
    wl = {"chat": ServiceWorkload("chat", 60.0, counts)}
    res = compute_oracle(cfg, wl, T0, T0, cap)
    spot_h = sum(v for k, v in res.instance_hours.items() if k.endswith("/spot"))
    od_h = sum(v for k, v in res.instance_hours.items() if k.endswith("/on-demand"))
    # the outage is [1800, 2400) s from the clock start; windows meeting [t - 120, t + 60) are on-demand:
    # w from 30 (1800 + 60 > 1800) to 41 (2460 - 120 < 2400): 12 windows
    assert od_h == pytest.approx(12 / 60)
    assert spot_h == pytest.approx(48 / 60)
