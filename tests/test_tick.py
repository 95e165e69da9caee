"""The whole tick against the real store and the simulated cloud; only the clock is fake."""

from datetime import timedelta

import numpy as np
import pytest

from daemon.config import parse_config
from daemon.demand.source import TraceReplay
from daemon.demand.request_log import RequestTrace
from daemon.lifecycle import State
from daemon.loop.tick import Loop, run_tick
from daemon.store.repo import Store
from daemon.store.schema import Alert, Decision, Instance, InstanceEvent
from providers.simulated import SimulatedProvider


def _cfg(**policy):
    return parse_config({
        "loop": {"tick_interval_s": 60, "window_s": 60, "lead_time_s": 120},
        "provider": {"simulated": {"stockout_probability": 0, "launch_failure_probability": 0,
                                   "spot_preemptions_per_hour": 0, "launch_latency_s": [90, 90]}},
        # The recent-peak forecast: these tests are about the loop's mechanics, not forecasting.
        "services": [{"name": "chat", "gpus": ["A10G"], "min_replicas": 1, "forecast": {"model": "recent_peak"}}],
        # On-demand only unless a test asks for spot: replica counts then follow from MaxTput alone.
        "policy": {"scale_down_delay_s": 300, "drain_s": 60, "spot": False, **policy},
        # A fixed MaxTput table keeps these tests about the loop, not about the estimator.
        "capacity": [{"model": "meta-llama/Llama-2-7b-hf", "gpu": "A10G", "tputs": [
            [33.74, 9.22, 1.1, 0.08], [5.84, 2.61, 0.59, 0.07], [1.51, 0.75, 0.22, 0.03], [0.0, 0.0, 0.0, 0.0]]}],
    })


def _steady(clock, rps, seconds=7200, input_tokens=500, output_tokens=100):
    n = int(rps * seconds)
    return RequestTrace("test", clock.now, np.linspace(0, seconds, n, endpoint=False),
                        np.full(n, input_tokens), np.full(n, output_tokens))


def _loop(cfg, store, clock, trace, provider=None):
    provider = provider or SimulatedProvider(cfg.provider.simulated, clock)
    src = TraceReplay("chat", trace, cfg.buckets.grid(), cfg.loop.window_s, clock.now)
    return Loop(cfg=cfg, store=store, provider=provider, sources={"chat": src}, clock=clock)


def _run(loop, clock, ticks):
    out = []
    for _ in range(ticks):
        clock.advance(60)
        out.append(run_tick(loop))
    return out


def _states(store):
    with store.session() as s:
        return sorted(r.state for r in s.query(Instance).all())


def test_scale_up_launch_to_running_then_steady_means_no_churn(store, clock):
    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 6.0))
    res = _run(loop, clock, 6)
    # 6 req/s at MaxTput 2.61 (input 256-1024, output 64-256, A10G) with 20% headroom -> 3 replicas.
    assert _states(store) == ["running"] * 3
    res = _run(loop, clock, 20)
    assert all(r.actions == () for r in res), "steady demand must not churn"
    with store.session() as s:
        evs = [(e.from_state, e.to_state, e.reason) for e in s.query(InstanceEvent).order_by(InstanceEvent.id)]
    assert evs.count((None, "requested", "launch_requested")) == 3
    assert evs.count(("requested", "provisioning", "launch_accepted")) == 3
    assert evs.count(("provisioning", "running", "became_ready")) == 3


def test_scale_down_drains_before_terminating(store, clock):
    cfg = _cfg()
    trace = _steady(clock, 6.0, seconds=1800)
    loop = _loop(cfg, store, clock, trace)
    _run(loop, clock, 40)  # demand stops at 30 min; lookback 5 min; drain 60 s
    with store.session() as s:
        rows = s.query(Instance).all()
        assert sorted(r.state for r in rows) == ["running", "terminated", "terminated"]
        for r in rows:
            if r.state == "terminated":
                path = [e.to_state for e in s.query(InstanceEvent).filter_by(instance_id=r.id).order_by(InstanceEvent.id)]
                assert path == ["requested", "provisioning", "running", "draining", "terminating", "terminated"]


def test_preemption_is_recorded_and_replaced(store, clock):
    cfg = _cfg(spot=True, spot_loss_coverage=0.0)
    loop = _loop(cfg, store, clock, _steady(clock, 6.0))
    _run(loop, clock, 5)
    # Take one spot zone away (the world's edge: the simulated cloud's capacity).
    with store.session() as s:
        victim = s.query(Instance).filter_by(state="running", market="spot").first()
        loc = "/".join([victim.cloud, victim.region, victim.zone])
    loop.provider._outages[loc] = [(clock.now, clock.now + timedelta(hours=1))]
    loop.provider._outage_rng[loc] = __import__("random").Random(0)
    res = _run(loop, clock, 6)
    with store.session() as s:
        ev = s.query(InstanceEvent).filter_by(instance_id=victim.id, to_state="preempted").one()
        assert ev.reason == "preempted"
        replaced = s.query(InstanceEvent).filter_by(reason="replaced").count()
        assert replaced >= 1
        # The preempted zone is in cooldown: no new instance was placed there.
        later = s.query(Instance).filter(Instance.requested_at > ev.at).all()
        assert later and all("/".join([i.cloud, i.region, i.zone or "-"]) != loc for i in later)
    assert _states(store).count("running") == 3


def test_dry_run_and_pause_never_call_the_provider(store, clock):
    class Spy(SimulatedProvider):
        calls = 0

        def launch(self, request):
            Spy.calls += 1
            super().launch(request)

    for flag in ("dry_run", "paused"):
        cfg = _cfg(**{flag: True})
        loop = _loop(cfg, store, clock, _steady(clock, 6.0), Spy(cfg.provider.simulated, clock))
        res = _run(loop, clock, 3)
        assert Spy.calls == 0 and all(r.outcome == flag for r in res)
        assert any(r.actions for r in res)  # the plan was made and recorded
    assert _states(store) == []


def test_a_failing_provider_fails_the_tick_not_the_loop(store, clock):
    class Flaky(SimulatedProvider):
        broken = True

        def list(self):
            if Flaky.broken:
                raise ConnectionError("cloud API unreachable")
            return super().list()

    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 6.0), Flaky(cfg.provider.simulated, clock))
    res = _run(loop, clock, 2)
    assert [r.outcome for r in res] == ["failed", "failed"]
    Flaky.broken = False
    res = _run(loop, clock, 4)
    assert res[-1].outcome == "applied"
    with store.session() as s:
        assert s.query(Decision).filter_by(outcome="failed").count() == 2
        assert s.query(Alert).filter_by(kind="tick_failed").count() == 2
        assert "cloud API unreachable" in s.query(Decision).filter_by(outcome="failed").first().error


def test_launch_refusal_is_recorded_with_its_reason(store, clock):
    cfg = parse_config({**_cfg().model_dump(mode="json"),
                        "provider": {"simulated": {"stockout_probability": 1.0}}})
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))
    _run(loop, clock, 2)
    with store.session() as s:
        evs = s.query(InstanceEvent).filter_by(to_state="failed").all()
        assert evs and all(e.reason == "no_capacity" for e in evs)
        assert s.query(Alert).filter_by(kind="launch_failed").count() == len(evs)


def test_intent_left_by_a_crash_is_carried_out_once(store, clock):
    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))

    class Crash(Exception):
        pass

    real_launch = loop.provider.launch

    def crash(_req):
        raise KeyboardInterrupt  # the process dies between intent and effect

    loop.provider.launch = crash
    with pytest.raises(KeyboardInterrupt):
        clock.advance(60)
        run_tick(loop)
    assert _states(store) == ["requested"]
    loop.provider.launch = real_launch
    with store.session() as s:
        assert Store.close_interrupted_decisions(s, clock.now) == 1
    _run(loop, clock, 4)
    assert _states(store) == ["running"]
    assert len(loop.provider.list()) == 1


def test_a_database_error_mid_tick_is_still_recorded_as_a_failed_decision(store, clock, monkeypatch):
    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))
    from sqlalchemy.exc import OperationalError

    def broken(*a, **k):
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(Store, "create_instance", staticmethod(broken))
    res = _run(loop, clock, 1)
    assert res[0].outcome == "failed" and res[0].decision_id is not None
    monkeypatch.undo()
    with store.session() as s:
        d = s.get(Decision, res[0].decision_id)
        assert d.outcome == "failed" and "disk I/O error" in d.error
    assert _run(loop, clock, 1)[0].outcome == "applied"
