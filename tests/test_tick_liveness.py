"""What a tick must not let run forever, and the seams that once broke in every tick.

Real store, real simulated cloud, real demand sources; only the clock is fake.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from daemon.config import parse_config
from daemon.demand.tail import RequestLogTail
from daemon.lifecycle import Reason, State
from daemon.loop.liveness import liveness, market_backoff
from daemon.loop.tick import run_tick
from daemon.store.repo import Store
from daemon.store.schema import Alert, Decision, DemandWindowRow, Instance, InstanceEvent
from daemon.wiring import build_system
from providers.base import InstanceStatus, LaunchRequest
from providers.simulated import SimulatedProvider
from tests.test_tick import _cfg, _loop, _run, _states, _steady


def _events(store, **filt):
    with store.session() as s:
        return s.query(InstanceEvent).filter_by(**filt).order_by(InstanceEvent.id).all()


def _alerts(store, kind):
    with store.session() as s:
        return [a.message for a in s.query(Alert).filter_by(kind=kind).order_by(Alert.id)]


def test_a_launch_never_healthy_is_timed_out_failed_cooled_and_replaced(store, clock):
    cfg = _cfg(launch_timeout_s=600)
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))
    slow = loop.provider
    # Launches in the first offering never come up (the world's edge: a broken image there).
    real_launch = slow.launch
    stuck: set[str] = set()

    def launch(req: LaunchRequest):
        real_launch(req)
        if not stuck or req.offering.key in {slow._instances[n].offering.key for n in stuck}:
            stuck.add(req.name)
            slow._instances[req.name].ready_at = clock.now + timedelta(days=30)

    slow.launch = launch
    _run(loop, clock, 9)
    assert _states(store) == ["provisioning"]  # 9 min: still within the 10 min timeout
    _run(loop, clock, 6)
    (ev,) = _events(store, reason="launch_timeout", from_state="provisioning")
    assert ev.to_state == "terminating" and "not healthy" in ev.detail
    (gone,) = _events(store, reason="launch_timeout", to_state="failed")  # confirmed gone: failed, billed till then
    with store.session() as s:
        row = s.get(Instance, ev.instance_id)
        assert row.state == "failed" and row.ended_at == gone.at
        # Its replacement went elsewhere (the market is cooled down) and is serving.
        rep = s.query(Instance).filter(Instance.id != row.id).one()
        assert rep.last_reason in ("became_ready",) and rep.offering_key != row.offering_key
        first_event = s.query(InstanceEvent).filter_by(instance_id=rep.id).order_by(InstanceEvent.id).first()
        assert first_event.reason == "replaced"
    assert _states(store) == ["failed", "running"]
    assert len(_alerts(store, "launch_timeout")) == 1


def test_launches_that_keep_failing_back_off_exponentially_and_alert(store, clock):
    cfg = parse_config({**_cfg(market_cooldown_s=120, backoff_alert_after=3).model_dump(mode="json"),
                        "provider": {"simulated": {"launch_failure_probability": 1.0, "launch_latency_s": [30, 30],
                                                   "stockout_probability": 0.0, "spot_preemptions_per_hour": 0}}})
    loop = _loop(cfg, store, clock, _steady(clock, 2.0, seconds=4 * 3600))
    _run(loop, clock, 60)  # an hour of every launch failing
    fails = _events(store, to_state="failed")
    launches = len(_events(store, reason="launch_accepted"))
    # Without back-off: a launch per market per tick (about 60 per market). With it, each
    # market's n-th failure in a row keeps it out 120 s x 2^(n-1): a handful per market.
    per_market: dict[str, int] = {}
    with store.session() as s:
        for e in fails:
            per_market[s.get(Instance, e.instance_id).offering_key] = per_market.get(
                s.get(Instance, e.instance_id).offering_key, 0) + 1
    assert launches == len(fails) and max(per_market.values()) <= 6
    assert launches < 60
    alerts = _alerts(store, "market_backoff")
    assert alerts and all("launch failures in a row" in a for a in alerts)
    # One alert per market and failure count, never the same one twice.
    assert len(alerts) == len(set(alerts))
    with store.session() as s:
        d = s.query(Decision).order_by(Decision.id.desc()).first()
        assert max(d.inputs["backoff"].values()) >= 3


def test_market_backoff_doubles_and_resets_on_success():
    cfg = _cfg(market_cooldown_s=100, max_market_cooldown_s=350)
    from tests.conftest import T0

    t = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    out = market_backoff([(t(0), "no_capacity", "k"), (t(200), "launch_failed", "k"),
                          (t(500), "launch_timeout", "k"), (t(10), "launch_failed", "j"),
                          (t(20), "became_ready", "j")], cfg.policy)
    assert set(out) == {"k"}  # j succeeded after its failure
    assert out["k"].failures == 3 and out["k"].until == t(500 + 350)  # 100 x 4 capped at 350
    assert market_backoff([(t(0), "no_capacity", "k")], cfg.policy)["k"].until == t(100)


def test_a_termination_never_confirmed_is_retried_and_alerted_once(store, clock):
    cfg = _cfg(terminate_timeout_s=300, drain_s=0)
    loop = _loop(cfg, store, clock, _steady(clock, 6.0, seconds=900))

    calls = []
    real = loop.provider.terminate

    def never(name):  # the cloud accepts the call and never does it
        calls.append(name)

    loop.provider.terminate = never
    _run(loop, clock, 40)  # demand ends at 15 min; scale-down after 5 min
    with store.session() as s:
        rows = s.query(Instance).filter_by(state="terminating").all()
    assert rows, "the scale-down asked for a termination"
    name = rows[0].name
    assert calls.count(name) > 5  # retried every tick
    stuck = _alerts(store, "terminate_stuck")
    assert len([a for a in stuck if a.startswith(name)]) == 1
    loop.provider.terminate = real
    _run(loop, clock, 3)
    assert "terminating" not in _states(store)


def test_orphans_are_terminated_or_adopted_and_alerted_once(store, clock, db_url):
    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))
    off = next(o for o in loop.provider.offerings() if o.gpu == "A10G" and o.market.value == "on-demand")
    loop.provider.launch(LaunchRequest("chat-000999", "chat", "m", off))  # a store restored from backup
    _run(loop, clock, 3)
    assert len(_alerts(store, "orphan")) == 1 and "terminated" in _alerts(store, "orphan")[0]
    assert [i.status for i in loop.provider.list() if i.name == "chat-000999"] == [InstanceStatus.TERMINATED]
    assert not _alerts(store, "drift")  # one alert for one orphan, not two
    # Names are the instance ids: no provider prefix in the store.
    with store.session() as s:
        assert all(r.name == r.id for r in s.query(Instance).all())


def test_a_request_log_feed_inside_the_tick(store, clock, tmp_path):
    """The live path: a tailed log read by the tick, windows stored once, decisions applied."""
    log = tmp_path / "req.jsonl"
    log.write_text("")
    cfg = parse_config({**_cfg().model_dump(mode="json"), "services": [{
        "name": "chat", "gpus": ["A10G"], "forecast": {"model": "recent_peak"},
        "demand": {"kind": "request-log", "path": str(log), "lateness_s": 0}}]})
    system = build_system(cfg, clock=clock, store=store, provider=SimulatedProvider(cfg.provider.simulated, clock))
    loop = system.loop()
    assert isinstance(loop.sources["chat"], RequestLogTail)
    written = 0
    for minute in range(8):
        t0 = clock.now.timestamp()
        with log.open("a") as f:
            for k in range(120):
                f.write(json.dumps({"timestamp": int((t0 + k * 0.5) * 1000), "input_length": 500,
                                    "output_length": 100}) + "\n")
                written += 1
        clock.advance(60)
        assert run_tick(loop).outcome == "applied"
    with store.session() as s:
        stored = sum(r.requests for r in s.query(DemandWindowRow).all())
        (kind, cursor), = Store.cursors(s).values()
    assert kind == "request-log" and cursor["offset"] == log.stat().st_size
    assert stored == written  # every request once: each tick runs when its minute is over
    assert "running" in _states(store)


def test_windows_of_a_rolled_back_observe_are_stored_by_the_next_tick(store, clock, monkeypatch):
    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))
    real = Store.save_cursor
    broken = {"once": True}

    def flaky(*a, **k):
        if broken.pop("once", False):
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(Store, "save_cursor", staticmethod(flaky))
    res = _run(loop, clock, 3)
    assert [r.outcome for r in res] == ["failed", "applied", "applied"]
    with store.session() as s:
        starts = [r.window_start for r in s.query(DemandWindowRow).order_by(DemandWindowRow.window_start)]
    assert len(starts) == len(set(starts)) == 3  # each of the 3 finished minutes, once


def test_refit_fits_outside_the_lock_while_ticks_go_on(store, clock, monkeypatch):
    import daemon.loop.tick as tick

    cfg = _cfg()
    loop = _loop(cfg, store, clock, _steady(clock, 2.0))
    _run(loop, clock, 2)
    started, release = threading.Event(), threading.Event()

    def slow_fit(cfg_, history, now, states, last):
        started.set()
        assert release.wait(10)
        return {"chat": "fitted"}

    monkeypatch.setattr(tick, "refit_forecasts", slow_fit)
    t = threading.Thread(target=loop.refit)
    t.start()
    assert started.wait(5)
    assert _run(loop, clock, 2)[-1].outcome == "applied"  # a tick runs while the fit is in progress
    release.set()
    t.join(5)
    assert loop.state.forecast_inputs()[0] == {"chat": "fitted"}


def test_fleetctl_plan_uses_the_daemons_planner(tmp_path):
    from typer.testing import CliRunner

    from daemon.cli.fleetctl import app
    from tests.conftest import AZURE_CONV, need

    url = f"sqlite:///{tmp_path / 'sim.db'}"
    cfgfile = tmp_path / "greedy.toml"
    cfgfile.write_text('[solver]\nbackend = "greedy"\n')
    r = CliRunner().invoke(app, ["simulate", "--trace", str(need(AZURE_CONV)), "--db", url, "--json",
                                 "--config", str(cfgfile)])
    assert r.exit_code == 0, r.output
    out = CliRunner().invoke(app, ["plan", "--db", url, "--json", "--config", str(cfgfile)])
    diff = json.loads(out.stdout)
    assert diff["solver"] == "greedy"


def test_liveness_is_pure_and_leaves_healthy_instances_alone():
    from daemon.domain import FleetInstance, Market, Offering
    from tests.conftest import T0

    pol = _cfg(launch_timeout_s=600, drain_timeout_s=300, terminate_timeout_s=900).policy
    off = Offering("aws", "r", "z", "g5", "A10G", 1, Market.SPOT, 1.0)
    old = T0 - timedelta(seconds=700)
    fleet = [
        FleetInstance("a", "a", "chat", off, "provisioning", launched_at=old),
        FleetInstance("b", "b", "chat", off, "provisioning", launched_at=T0 - timedelta(seconds=100)),
        FleetInstance("c", "c", "chat", off, "running", launched_at=old),
        FleetInstance("d", "d", "chat", off, "draining", launched_at=old, drain_until=T0 - timedelta(seconds=301)),
        FleetInstance("e", "e", "chat", off, "terminating", launched_at=old, state_since=T0 - timedelta(seconds=901)),
    ]
    live = liveness(fleet, T0, pol)
    assert [(a.instance_id, a.reason) for a in live.actions] == [("a", Reason.LAUNCH_TIMEOUT), ("d", Reason.DRAIN_TIMEOUT)]
    assert [i.id for i in live.stuck_terminations] == ["e"]
    assert liveness(fleet, T0, pol) == live
