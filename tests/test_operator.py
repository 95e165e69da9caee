"""The operator's commands on a real store (SQLite and PostgreSQL): status, audit, events,
decisions show, pause/resume. Stores are built through the store's own API (and, for the
decision explanation, by the real tick against the simulated cloud)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from daemon.audit import GROUP_KEYS, PriceBook, audit
from daemon.cli.fleetctl import app
from daemon.domain import Market, Offering
from daemon.lifecycle import Reason, State
from daemon.store.fastread import open_reader
from daemon.store.repo import Store
from daemon.store.schema import Instance
from tests.conftest import T0

runner = CliRunner()
H = timedelta(hours=1)

SPOT = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.50)
OD = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.ON_DEMAND, 1.00)
AZ = Offering("azure", "westus3", None, "Standard_NC24ads_A100_v4", "A100-80GB", 1, Market.SPOT, 1.20)
LONG_SVC = "inference-llama-70b-chat-production"  # 35 characters: the config allows 40


def _cli(*args, env=None):
    r = runner.invoke(app, list(args), env={"COLUMNS": "80", **(env or {})})
    return r


def _new(s, iid, off, at, svc="chat", reason=Reason.LAUNCH_REQUESTED, od_price=None):
    return Store.create_instance(s, instance_id=iid, name=f"fleet-{iid}", service=svc, provider="sim", offering=off,
                                 at=at, reason=reason, decision_id=None, on_demand_price=od_price)


def _run(s, row, at, ready_after=timedelta(minutes=6)):
    Store.transition(s, row, State.PROVISIONING, Reason.LAUNCH_ACCEPTED, at)
    Store.transition(s, row, State.RUNNING, Reason.BECAME_READY, at + ready_after)


def _history(store):
    """A small history with hand-checkable figures (prices $/h, times from T0).

    i1 spot  0.50: accepted T0, ready +6 min, preempted at +10 h           -> 10 h, $5.00
    i2 od    1.00: accepted T0, ready +6 min, drained +20 h, gone +20.5 h  -> 20.5 h, $20.50
    i3 spot  0.50: replacement of i1: requested +10 h, ready +10 h 30 min, still running at +24 h -> 14 h, $7.00
    i4 azure 1.20: no capacity at +2 h (never billed)
    """
    with store.session() as s:
        d = Store.start_decision(s, T0 + 24 * H)
        d.outcome = "applied"
        i1 = _new(s, "chat-000001", SPOT, T0)
        _run(s, i1, T0)
        i2 = _new(s, "chat-000002", OD, T0)
        _run(s, i2, T0)
        Store.transition(s, i1, State.PREEMPTED, Reason.PREEMPTED, T0 + 10 * H, "spot capacity lost")
        i3 = _new(s, "chat-000003", SPOT, T0 + 10 * H, reason=Reason.REPLACED)
        Store.transition(s, i3, State.PROVISIONING, Reason.LAUNCH_ACCEPTED, T0 + 10 * H)
        Store.transition(s, i3, State.RUNNING, Reason.BECAME_READY, T0 + 10.5 * H)
        Store.transition(s, i2, State.DRAINING, Reason.SCALE_DOWN, T0 + 20 * H, drain_until=T0 + 20.5 * H)
        Store.transition(s, i2, State.TERMINATING, Reason.DRAIN_COMPLETE, T0 + 20.5 * H)
        Store.transition(s, i2, State.TERMINATED, Reason.TERMINATE_CONFIRMED, T0 + 20.5 * H)
        i4 = _new(s, "chat-000004", AZ, T0 + 2 * H)
        Store.transition(s, i4, State.FAILED, Reason.NO_CAPACITY, T0 + 2 * H, "stockout")


def test_audit_figures_from_lifecycle_intervals(store, db_url):
    _history(store)
    with open_reader(db_url) as r:
        rep = audit(r, by=("market",))
        g = {x["market"]: x for x in rep["groups"]}
        assert g["spot"]["instance_hours"] == pytest.approx(24.0) and g["spot"]["cost_usd"] == pytest.approx(12.0)
        assert g["on-demand"]["instance_hours"] == pytest.approx(20.5)
        assert rep["total_cost_usd"] == pytest.approx(32.5)
        # all on demand: the spot hours at the on-demand price of the same type in the region (this
        # fleet's own on-demand g5.xlarge: $1.00) -> saved 24 h x $0.50
        assert rep["totals"]["on_demand_cost_usd"] == pytest.approx(44.5)
        assert rep["totals"]["savings_usd"] == pytest.approx(12.0)
        # one preemption, replaced 30 minutes later
        assert rep["totals"]["preemptions"] == 1 and rep["totals"]["not_replaced"] == 0
        assert g["spot"]["capacity_hours_lost"] == pytest.approx(0.5) and g["spot"]["gpu_hours_lost"] == pytest.approx(0.5)
        assert rep["events_by_reason"]["no_capacity"] == 1 and rep["decisions_by_outcome"] == {"applied": 1}

        # the window clips intervals: [+5 h, +15 h)
        w = audit(r, since=T0 + 5 * H, until=T0 + 15 * H, by=("service",))
        assert w["groups"][0]["instance_hours"] == pytest.approx(5 + 10 + 5)
        assert w["total_cost_usd"] == pytest.approx(5 * 0.5 + 10 * 1.0 + 5 * 0.5)

        # by state / reason: each billable interval under the state it was in and the transition's reason
        st = {x["state"]: x["instance_hours"] for x in audit(r, by=("state",))["groups"]}
        assert st["provisioning"] == pytest.approx(0.1 + 0.1 + 0.5)
        assert st["draining"] == pytest.approx(0.5) and st["preempted"] == 0
        assert st["running"] == pytest.approx(9.9 + 19.9 + 13.5)
        rs = {x["reason"]: x for x in audit(r, by=("reason",))["groups"]}
        assert rs["scale_down"]["instance_hours"] == pytest.approx(0.5)
        assert rs["preempted"]["preemptions"] == 1
        lr = {x["launch_reason"]: x["instance_hours"] for x in audit(r, by=("launch_reason",))["groups"]}
        assert lr == {"launch_requested": pytest.approx(30.5), "replaced": pytest.approx(14.0)}

        # the savings baseline falls back from the instance type to the GPU shape in the region,
        # then anywhere, then to nothing (and then no saving is claimed)
        book = PriceBook().add("t", [("aws", "us-east-1", "p9.big", "A10G", 1, 2.0),
                                     ("gcp", "europe-west4", "g9", "A10G", 1, 1.5)])
        shape = audit(r, by=("market",), prices=book)
        assert shape["totals"]["savings_usd"] == pytest.approx(24 * (2.0 - 0.5))
        assert shape["reference_prices"]["same GPU shape, region (t)"] == 2
        far = audit(r, by=("market",), prices=PriceBook().add("t", [("gcp", "europe-west4", "g9", "A10G", 1, 1.5)]))
        assert far["totals"]["savings_usd"] == pytest.approx(24 * (1.5 - 0.5))
        none = audit(r, by=("market",), prices=PriceBook())
        assert none["totals"]["savings_usd"] == 0 and none["reference_prices"]["none"] == 2
        with pytest.raises(ValueError, match="allowed"):
            audit(r, by=("colour",))


def test_audit_prefers_the_price_recorded_at_launch(store, db_url):
    with store.session() as s:
        row = _new(s, "chat-000001", SPOT, T0, od_price=1.50)
        _run(s, row, T0)
        Store.start_decision(s, T0 + 2 * H).outcome = "applied"
    with open_reader(db_url) as r:
        rep = audit(r, by=("market",), prices=PriceBook())
    assert rep["totals"]["on_demand_cost_usd"] == pytest.approx(3.0)
    assert rep["reference_prices"] == {"recorded at launch": 1}


def test_audit_cli_formats(store, db_url):
    _history(store)
    j = _cli("audit", "--db", db_url, "--by", "service,cloud,region,zone,gpu,market,reason", "--format", "json")
    assert j.exit_code == 0, j.output
    rep = json.loads(j.stdout)
    assert rep["group_by"] == ["service", "cloud", "region", "zone", "gpu", "market", "reason"]
    c = _cli("audit", "--db", db_url, "--by", "gpu,market", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(c.stdout)))
    assert {r["market"] for r in rows} == {"spot", "on-demand"}
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(32.5)
    t = _cli("audit", "--db", db_url, "--by", ",".join(k for k in GROUP_KEYS if k != "instance_type"))
    assert t.exit_code == 0, t.output
    assert all(len(line) <= 80 for line in t.stdout.splitlines()), t.stdout
    assert "saved $12.00" in t.stdout and "on-demand" in t.stdout and "…" not in t.stdout
    bad = _cli("audit", "--db", db_url, "--by", "colour")
    assert bad.exit_code == 2 and "colour" in bad.output
    assert _cli("audit", "--db", db_url, "--format", "xml").exit_code == 2


def test_status_fits_80_columns_without_cutting_names(store, db_url):
    with store.session() as s:
        for k, (off, svc) in enumerate([(AZ, LONG_SVC), (OD, LONG_SVC), (SPOT, "chat")]):
            row = _new(s, f"x-{k}", off, T0, svc=svc)
            Store.transition(s, row, State.PROVISIONING, Reason.LAUNCH_ACCEPTED, T0)
        row = _new(s, "x-9", SPOT, T0)
        _run(s, row, T0)
        Store.transition(s, row, State.PREEMPTED, Reason.PREEMPTED, T0 + H, "spot capacity lost in aws/us-east-1/us-east-1a")
        Store.start_decision(s, T0 + H).outcome = "applied"
    r = _cli("status", "--db", db_url)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(l for l in lines if len(l) > 80)
    for name in (LONG_SVC, "Standard_NC24ads_A100_v4", "provisioning", "on-demand", "A100-80GBx1", "fleet-x-9",
                 "azure/westus3"):
        assert name in r.stdout
    assert "…" not in r.stdout
    j = json.loads(_cli("status", "--db", db_url, "--json").stdout)
    assert j["cost_per_hour_usd"] == pytest.approx(1.2 + 1.0 + 0.5)
    assert [g["count"] for g in j["groups"]] == [1, 1, 1]


def test_status_agrees_with_the_orm(store, db_url):
    """The fast read path (plain SQL) and the store's ORM see the same fleet."""
    _history(store)
    with open_reader(db_url) as r:
        from daemon.status import fleet_status

        st = fleet_status(r)
    with store.session() as s:
        live = Store.instances(s, frozenset({State.REQUESTED, State.PROVISIONING, State.RUNNING, State.DRAINING,
                                             State.TERMINATING}))
        cost = Store.fleet_cost_per_hour(s)
    assert sorted(i["id"] for i in st["instances"]) == sorted(x.id for x in live)
    assert st["cost_per_hour_usd"] == pytest.approx(cost)
    assert {i["id"]: i["launched_at"] for i in st["instances"]} == {x.id: x.launched_at.isoformat() for x in live}
    assert [e["reason"] for e in st["recent_events"]] == ["preempted", "no_capacity"] and st["decisions"] == 1


def test_status_says_who_leads_and_who_stands_by(store, db_url):
    from daemon.store.lease import Leadership

    now = datetime.now(timezone.utc)
    one = Leadership(store, ttl_s=30, clock=lambda: now, holder="hostA:101:aa")
    two = Leadership(store, ttl_s=30, clock=lambda: now, holder="hostB:202:bb")
    one.refresh()
    two.refresh()
    r = _cli("status", "--db", db_url)
    assert "Leader: hostA:101:aa (token 1, lease live" in r.stdout
    assert "Standby: hostB:202:bb" in r.stdout
    j = json.loads(_cli("status", "--db", db_url, "--json").stdout)
    assert j["leader"]["holder"] == "hostA:101:aa" and [d["role"] for d in j["daemons"]] == ["leader", "standby"]


def test_pause_and_resume_are_kept_in_the_store(store, db_url):
    with store.session() as s:
        assert Store.paused(s) is False
    r = _cli("pause", "--db", db_url, "--note", "cloud maintenance")
    assert r.exit_code == 0 and "stops acting from its next tick" in r.stdout
    with store.session() as s:
        assert Store.paused(s) is True
    st = _cli("status", "--db", db_url).stdout
    assert "PAUSED since" in st and "cloud maintenance" in st
    assert "already paused" in _cli("pause", "--db", db_url).stdout
    r = _cli("resume", "--db", db_url)
    assert r.exit_code == 0 and "acts again" in r.stdout
    with store.session() as s:
        assert Store.paused(s) is False
    assert "PAUSED" not in _cli("status", "--db", db_url).stdout
    assert "was not paused" in _cli("resume", "--db", db_url).stdout


def test_events_filters(store, db_url):
    _history(store)
    allev = json.loads(_cli("events", "--db", db_url, "--json", "--limit", "0").stdout)
    assert len(allev) == 15 and allev == sorted(allev, key=lambda e: (e["at"], e["id"]))
    pre = json.loads(_cli("events", "--db", db_url, "--json", "--reason", "preempted").stdout)
    assert [e["instance"] for e in pre] == ["fleet-chat-000001"] and pre[0]["detail"] == "spot capacity lost"
    one = json.loads(_cli("events", "--db", db_url, "--json", "--instance", "fleet-chat-000002").stdout)
    assert [e["to"] for e in one] == ["requested", "provisioning", "running", "draining", "terminating", "terminated"]
    since = json.loads(_cli("events", "--db", db_url, "--json", "--since", (T0 + 15 * H).isoformat()[:19]).stdout)
    assert [e["reason"] for e in since] == ["scale_down", "drain_complete", "terminate_confirmed"]
    last2 = json.loads(_cli("events", "--db", db_url, "--json", "--limit", "2").stdout)
    assert [e["id"] for e in last2] == [e["id"] for e in allev[-2:]]
    text = _cli("events", "--db", db_url)
    assert text.exit_code == 0 and all(len(line) <= 80 for line in text.stdout.splitlines())
    bad = _cli("events", "--db", db_url, "--reason", "sunspots")
    assert bad.exit_code == 2 and "sunspots" in bad.output
    assert _cli("events", "--db", db_url, "--instance", "nope").exit_code == 1


def test_decisions_show_explains_a_real_tick(store, db_url, clock):
    """Ticks of the real loop against the simulated cloud; a budget cap binds."""
    import numpy as np

    from daemon.config import parse_config
    from daemon.demand.source import TraceReplay
    from daemon.demand.request_log import RequestTrace
    from daemon.loop.tick import Loop, run_tick
    from providers.simulated import SimulatedProvider

    cfg = parse_config({
        "loop": {"tick_interval_s": 60, "window_s": 60, "lead_time_s": 120},
        "provider": {"simulated": {"stockout_probability": 0, "launch_failure_probability": 0,
                                   "spot_preemptions_per_hour": 0, "launch_latency_s": [90, 90]}},
        "services": [{"name": "chat", "gpus": ["A10G"], "min_replicas": 1, "forecast": {"model": "recent_peak"}}],
        "policy": {"spot": False, "budget_per_hour": 2.5},
        "capacity": [{"model": "meta-llama/Llama-2-7b-hf", "gpu": "A10G", "tputs": [
            [33.74, 9.22, 1.1, 0.08], [5.84, 2.61, 0.59, 0.07], [1.51, 0.75, 0.22, 0.03], [0.0, 0.0, 0.0, 0.0]]}],
    })
    n = int(12.0 * 3600)
    trace = RequestTrace("test", clock.now, np.linspace(0, 3600, n, endpoint=False), np.full(n, 500), np.full(n, 100))
    src = TraceReplay("chat", trace, cfg.buckets.grid(), 60, clock.now)
    loop = Loop(cfg=cfg, store=store, provider=SimulatedProvider(cfg.provider.simulated, clock), sources={"chat": src},
                clock=clock)
    results = []
    for _ in range(4):
        clock.advance(60)
        results.append(run_tick(loop))
    first = next(x for x in results if x.actions)
    r = _cli("decisions", "show", str(first.decision_id), "--db", db_url)
    assert r.exit_code == 0, r.output
    out = r.stdout
    for title in ("Inputs", "Forecast", "Plan", "Limits", "Actions", "Outcome"):
        assert f"\n{title}\n" in out
    assert "req/s expected over the next 180 s" in out
    assert "Bound by: budget" in out or "exceeded the budget cap" in out
    assert "launch 2 x chat on aws" in out or "launch " in out
    assert "requested -> provisioning (launch_accepted)" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    doc = json.loads(_cli("decisions", "show", str(first.decision_id), "--db", db_url, "--json").stdout)
    assert [s["title"] for s in doc["sections"]] == ["Inputs", "Forecast", "Plan", "Limits", "Actions", "Outcome"]
    missing = _cli("decisions", "show", "99999", "--db", db_url)
    assert missing.exit_code == 1 and "no decision #99999" in missing.output
    lst = json.loads(_cli("decisions", "list", "--db", db_url, "--json").stdout)
    assert [d["id"] for d in lst] == [x.decision_id for x in results]
