"""forecast, plan and reconcile are pure: same inputs, same outputs, no clock, no I/O."""

from collections import Counter
from datetime import timedelta

import pytest

from daemon.config import PolicyConfig, default_config
from daemon.capacity import capacity_table
from daemon.domain import DemandWindow, FleetInstance, Market, Offering
from daemon.lifecycle import Reason
from daemon.loop.reconcile import ActionKind, reconcile
from daemon.plan import PlanInputs, ServiceDemand
from daemon.plan.greedy import plan_greedy as plan  # the heuristic backend; the ILP has its own tests
from forecast.baseline import recent_peak
from providers.simulated import load_offerings
from tests.conftest import T0

CFG = default_config()
GRID = CFG.buckets.grid()
CAP = capacity_table(CFG)
OFFERS = tuple(load_offerings())


def _window(k, n, cell=(1, 1)):
    counts = [[0.0] * GRID.n_output for _ in range(GRID.n_input)]
    counts[cell[0]][cell[1]] = n
    return DemandWindow("chat", T0 + timedelta(seconds=60 * k), 60.0, tuple(tuple(r) for r in counts))


def test_recent_peak_scales_up_at_once_and_down_only_after_the_lookback():
    hist = [_window(k, 60) for k in range(30)] + [_window(30, 600)]
    f = recent_peak(hist, "chat", T0 + timedelta(seconds=31 * 60), 360, GRID, peak_window_s=1200)
    assert f.rate_rps == pytest.approx(10.0)
    assert f.mix[1][1] == pytest.approx(1.0)
    quiet = hist + [_window(31 + k, 60) for k in range(15)]
    f = recent_peak(quiet, "chat", T0 + timedelta(seconds=46 * 60), 360, GRID, peak_window_s=1200)
    assert f.rate_rps == pytest.approx(10.0)  # the burst is 15 min old: still inside 20 min
    f = recent_peak(quiet, "chat", T0 + timedelta(seconds=52 * 60), 360, GRID, peak_window_s=1200)
    assert f.rate_rps == pytest.approx(1.0)


def _inputs(rate, fleet=(), policy=None, unavailable=frozenset(), cell=(1, 1), gpus=("A10G", "L4", "A100-80GB", "H100")):
    mix = [[0.0] * GRID.n_output for _ in range(GRID.n_input)]
    mix[cell[0]][cell[1]] = 1.0
    from daemon.domain import DemandForecast

    fc = DemandForecast("chat", T0, 360, rate, tuple(tuple(r) for r in mix), "test")
    return PlanInputs(now=T0, grid=GRID, demands=(ServiceDemand("chat", fc, 1, tuple(gpus)),), capacity=CAP,
                      offerings=OFFERS, fleet=tuple(fleet), policy=policy or CFG.policy, unavailable=unavailable)


def test_plan_is_deterministic_and_covers_demand_with_headroom():
    a, b = plan(_inputs(20.0)), plan(_inputs(20.0))
    assert a == b
    (pool,) = {r.pool for r in a.routes}
    tput = CAP.get("chat", pool)[1][1]
    replicas = sum(a.targets.values())
    assert replicas * tput >= 20.0 * 1.2 - 1e-9
    assert a.cost_per_hour == pytest.approx(sum(a.offerings[k].price_per_hour * n for (_, k), n in a.targets.items()))


def test_plan_survives_the_loss_of_any_one_zone():
    p = plan(_inputs(20.0))
    total = sum(p.targets.values())
    by_loc = Counter()
    for (_, k), n in p.targets.items():
        if k.endswith("/spot"):
            by_loc[p.offerings[k].location] += n
    coverage = PolicyConfig().spot_loss_coverage  # the shipped default
    assert 0 < coverage and total - max(by_loc.values(), default=0) >= coverage * total - 1e-9


def test_plan_respects_spot_off_unavailable_markets_and_min_replicas():
    p = plan(_inputs(20.0, policy=PolicyConfig(spot=False)))
    assert all(k.endswith("/on-demand") for (_, k) in p.targets)
    spot_keys = frozenset(o.key for o in OFFERS if o.market is Market.SPOT)
    p = plan(_inputs(20.0, unavailable=spot_keys))
    assert all(k not in spot_keys for (_, k) in p.targets)
    p = plan(_inputs(0.0))
    assert sum(p.targets.values()) == 1


def test_plan_never_exceeds_the_budget_and_says_so():
    p = plan(_inputs(200.0, policy=PolicyConfig(budget_per_hour=5.0)))
    assert p.cost_per_hour <= 5.0
    assert "budget" in p.binding


def test_plan_reports_unservable_mix():
    p = plan(_inputs(5.0, cell=(3, 0), gpus=("A10G",)))  # long prompts: A10G cannot meet TTFT
    assert p.targets == {} and p.unserved_rps["chat"] == 5.0


def _inst(i, key, state, launched=0, service="chat"):
    off = next(o for o in OFFERS if o.key == key)
    return FleetInstance(id=f"i{i}", name=f"fleet-i{i}", service=service, offering=off, state=state,
                         launched_at=T0 + timedelta(seconds=launched))


OD = next(o for o in OFFERS if o.market is Market.ON_DEMAND and o.gpu == "A10G").key
SPOT = next(o for o in OFFERS if o.market is Market.SPOT and o.gpu == "A10G").key


def _plan(targets):
    from daemon.domain import Plan

    return Plan(targets={("chat", k): n for k, n in targets.items()}, offerings={o.key: o for o in OFFERS},
                routes=(), cost_per_hour=0.0, status="test")


def test_reconcile_launches_the_gap_and_marks_replacements():
    fleet = [_inst(1, OD, "running")]
    rec = reconcile(_plan({OD: 3}), fleet, {o.key: o for o in OFFERS}, CFG.policy, T0, Counter({"chat": 1}))
    kinds = [(a.kind, a.reason) for a in rec.actions]
    assert kinds == [(ActionKind.LAUNCH, Reason.REPLACED), (ActionKind.LAUNCH, Reason.LAUNCH_REQUESTED)]


def test_reconcile_cancels_unstarted_first_drains_newest_and_keeps_limits():
    fleet = [_inst(1, OD, "running", 0), _inst(2, OD, "running", 100), _inst(3, OD, "requested"),
             _inst(4, OD, "running", 50)]
    rec = reconcile(_plan({OD: 1}), fleet, {o.key: o for o in OFFERS}, CFG.policy, T0)
    got = [(a.kind, a.instance_id) for a in rec.actions]
    assert got == [(ActionKind.CANCEL, "i3"), (ActionKind.DRAIN, "i2"), (ActionKind.DRAIN, "i4")]
    assert all(a.drain_until == T0 + timedelta(seconds=CFG.policy.drain_s) for a in rec.actions[1:])
    limited = reconcile(_plan({OD: 1}), fleet, {o.key: o for o in OFFERS},
                        PolicyConfig(max_terminations_per_tick=1), T0)
    assert len(limited.actions) == 1 and limited.skipped_for_limits == 2


def test_reconcile_makes_before_it_breaks():
    fleet = [_inst(1, OD, "running"), _inst(2, OD, "running")]
    rec = reconcile(_plan({SPOT: 2}), fleet, {o.key: o for o in OFFERS}, CFG.policy, T0)
    assert [a.kind for a in rec.actions] == [ActionKind.LAUNCH, ActionKind.LAUNCH]
    assert rec.held_for_make_before_break == 2
    fleet += [_inst(3, SPOT, "running"), _inst(4, SPOT, "running")]
    rec = reconcile(_plan({SPOT: 2}), fleet, {o.key: o for o in OFFERS}, CFG.policy, T0)
    assert sorted(a.kind for a in rec.actions) == [ActionKind.DRAIN, ActionKind.DRAIN]


def test_reconcile_finishes_drains_and_undrains_when_wanted_again():
    d = _inst(1, OD, "draining")
    d = FleetInstance(**{**d.__dict__, "drain_until": T0 - timedelta(seconds=1)})
    rec = reconcile(_plan({}), [d], {o.key: o for o in OFFERS}, CFG.policy, T0)
    assert [(a.kind, a.reason) for a in rec.actions] == [(ActionKind.TERMINATE, Reason.DRAIN_COMPLETE)]
    d2 = FleetInstance(**{**d.__dict__, "drain_until": T0 + timedelta(seconds=60)})
    rec = reconcile(_plan({OD: 1}), [d2], {o.key: o for o in OFFERS}, CFG.policy, T0)
    assert [a.kind for a in rec.actions] == [ActionKind.UNDRAIN]
    # A drain the gateway says still holds connections waits (liveness forces it later).
    assert reconcile(_plan({}), [d], {o.key: o for o in OFFERS}, CFG.policy, T0, hold_drains=frozenset({d.name})
                     ).actions == ()


def test_reconcile_never_launches_past_the_dollar_cap():
    fleet = [_inst(1, OD, "running")]
    price = next(o for o in OFFERS if o.key == OD).price_per_hour
    rec = reconcile(_plan({OD: 5}), fleet, {o.key: o for o in OFFERS},
                    PolicyConfig(budget_per_hour=price * 2.5), T0)
    assert len(rec.actions) == 1 and rec.skipped_for_budget == 3


def test_reconcile_gives_an_instance_one_action_per_tick():
    # Found by a 3-day replay: a drain that just finished but is wanted again was both
    # terminated and brought back. It must only come back.
    done = FleetInstance(**{**_inst(1, OD, "draining").__dict__, "drain_until": T0 - timedelta(seconds=1)})
    rec = reconcile(_plan({OD: 1}), [done], {o.key: o for o in OFFERS}, CFG.policy, T0)
    assert [(a.kind, a.instance_id) for a in rec.actions] == [(ActionKind.UNDRAIN, "i1")]
    fleet = [FleetInstance(**{**_inst(k, OD, "draining").__dict__, "drain_until": T0 - timedelta(seconds=k)})
             for k in range(1, 4)] + [_inst(9, OD, "running")]
    for target in range(0, 6):
        rec = reconcile(_plan({OD: target}), fleet, {o.key: o for o in OFFERS}, CFG.policy, T0)
        ids = [a.instance_id for a in rec.actions if a.instance_id]
        assert len(ids) == len(set(ids)), (target, rec.actions)


def test_replan_only_when_demand_fleet_or_markets_move():
    from daemon.loop.tick import plan_basis, plan_still_fits

    base = plan_basis(_inputs(20.0))
    later = T0 + timedelta(seconds=60)

    def at(inputs, when=later):
        from dataclasses import replace

        return replace(plan_basis(inputs), at=when)

    assert plan_still_fits(base, at(_inputs(20.5)), CFG)  # +2.5%: inside the 5% band
    assert not plan_still_fits(base, at(_inputs(21.5)), CFG)  # +7.5%
    assert not plan_still_fits(base, at(_inputs(20.0, cell=(2, 2))), CFG)  # the size mix moved
    assert not plan_still_fits(base, at(_inputs(20.0, fleet=[_inst(1, OD, "running")])), CFG)
    assert not plan_still_fits(base, at(_inputs(20.0, unavailable=frozenset({SPOT}))), CFG)
    assert not plan_still_fits(base, at(_inputs(20.0), T0 + timedelta(seconds=CFG.loop.replan_every_s)), CFG)
