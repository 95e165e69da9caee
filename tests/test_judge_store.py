"""The judge's store adapter: timelines from the store, on hand-made rows and on a real replay."""

from datetime import timedelta

import numpy as np
import pytest

from daemon.config import default_config
from daemon.domain import Market, Offering
from daemon.judge import Requests, judge
from daemon.judge.judge import routable_windows
from daemon.judge.store_adapter import fleet_from_store, inputs_from_store, routing_from_store
from daemon.lifecycle import Reason, State
from daemon.store.repo import Store
from tests.conftest import AZURE_CONV, T0, need


def _offering(cloud, gpu, market=Market.SPOT):
    return Offering(cloud, "r1", "z1" if cloud != "azure" else None, f"{gpu}-box", gpu, 1, market, 1.0)


def _instance(s, k, cloud, gpu, path, market=Market.SPOT):
    """An instance that walks `path`: [(seconds after T0, state, reason)]."""
    row = Store.create_instance(s, instance_id=f"chat-{k:06d}", name=f"fleet-chat-{k:06d}", service="chat",
                                provider="simulated", offering=_offering(cloud, gpu, market), at=T0,
                                reason=Reason.LAUNCH_REQUESTED, decision_id=None)
    for sec, state, reason in path:
        Store.transition(s, row, state, reason, T0 + timedelta(seconds=sec))
    return row


def test_fleet_and_routes_from_hand_made_rows(store):
    with store.session() as s:
        _instance(s, 1, "aws", "A10G", [(0, State.PROVISIONING, Reason.LAUNCH_ACCEPTED),
                                        (120, State.RUNNING, Reason.BECAME_READY),
                                        (900, State.PREEMPTED, Reason.PREEMPTED)])
        _instance(s, 2, "gcp", "L4", [(0, State.PROVISIONING, Reason.LAUNCH_ACCEPTED),
                                      (200, State.RUNNING, Reason.BECAME_READY),
                                      (400, State.DRAINING, Reason.SCALE_DOWN),
                                      (460, State.RUNNING, Reason.LAUNCH_REQUESTED),  # wanted again
                                      (700, State.DRAINING, Reason.SCALE_DOWN),
                                      (820, State.TERMINATING, Reason.DRAIN_COMPLETE),
                                      (880, State.TERMINATED, Reason.TERMINATE_CONFIRMED)])
        _instance(s, 3, "azure", "H100", [(0, State.PROVISIONING, Reason.LAUNCH_ACCEPTED),
                                          (100, State.FAILED, Reason.LAUNCH_FAILED)])
        _instance(s, 4, "gcp", "A100-80GB", [(0, State.PROVISIONING, Reason.LAUNCH_ACCEPTED),
                                             (150, State.RUNNING, Reason.BECAME_READY),
                                             (300, State.PREEMPTED, Reason.PREEMPTED)])
        _instance(s, 5, "lambda", "H100", [(0, State.PROVISIONING, Reason.LAUNCH_ACCEPTED),
                                           (90, State.RUNNING, Reason.BECAME_READY)], Market.ON_DEMAND)
        routes_a = [{"service": "chat", "input_bucket": 0, "output_bucket": None, "pool": "A10Gx1", "weight": 1.0}]
        routes_b = [{"service": "chat", "input_bucket": 0, "output_bucket": None, "pool": "L4x1", "weight": 1.0}]
        for sec, outcome, status, routes in [(0, "applied", "optimal", routes_a), (60, "applied", "reused", routes_a),
                                             (120, "applied", "infeasible", routes_b),
                                             (180, "dry_run", "optimal", routes_b),
                                             (240, "applied", "optimal", routes_b)]:
            d = Store.start_decision(s, T0 + timedelta(seconds=sec))
            d.outcome, d.plan_status = outcome, status
            d.plan = {"status": status, "routes": routes}
    t0 = T0.timestamp()
    fleet = {r.name: r for r in fleet_from_store(store)}
    assert set(fleet) == {"fleet-chat-000001", "fleet-chat-000002", "fleet-chat-000004", "fleet-chat-000005"}
    aws = fleet["fleet-chat-000001"]
    assert (aws.pool, aws.ready_at, aws.end_at, aws.preempted, aws.notice_s) == ("A10Gx1", t0 + 120, t0 + 900, True, 120.0)
    assert routable_windows(aws) == [(t0 + 120, t0 + 780)]  # AWS's two minutes of notice
    l4 = fleet["fleet-chat-000002"]
    assert (l4.drain_at, l4.end_at, l4.preempted) == (t0 + 700, t0 + 820, False)  # serving stops at TERMINATING
    assert l4.out_of_routing == ((t0 + 400, t0 + 460),)
    assert routable_windows(l4) == [(t0 + 200, t0 + 400), (t0 + 460, t0 + 700)]
    gcp = fleet["fleet-chat-000004"]
    assert gcp.notice_s == 30.0 and routable_windows(gcp) == [(t0 + 150, t0 + 270)]
    od = fleet["fleet-chat-000005"]
    assert od.end_at is None and od.market == "on-demand" and not od.preempted
    tables = routing_from_store(store)
    assert [t.start_s for t in tables] == [t0, t0 + 240]  # reused: no change; infeasible / dry run: not published
    assert tables[1].weights == {("chat", 0): (("L4x1", 1.0),)}


def test_unreadable_store_is_a_clear_error(tmp_path):
    import sqlite3

    from daemon.judge import JudgeInputError

    with pytest.raises(JudgeInputError, match="no such database"):
        fleet_from_store(f"sqlite:///{tmp_path / 'missing.db'}")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table x (a)").connection.commit()
    with pytest.raises(JudgeInputError, match="not a fleet store.*instances"):
        fleet_from_store(f"sqlite:///{other}")


@pytest.mark.slow
def test_judge_a_real_short_replay(tmp_path, capsys):
    from daemon.demand.request_log import read_trace
    from daemon.simulate import simulate

    cfg = default_config()
    trace = read_trace(need(AZURE_CONV))
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    summary = simulate(cfg, trace, url).as_dict()
    inputs = inputs_from_store(cfg, url, trace)
    assert len(inputs.requests) == len(trace) == 19366
    assert inputs.routing and inputs.fleet
    hours = sum(summary["instance_hours"].values())
    assert hours > 0 and all(r.service == "chat" for r in inputs.fleet)
    v = judge(inputs)
    s = v.summary()
    assert s["requests"] == 19366
    # The service's context (max_model_len, at most the model's): every request longer is refused, and only those.
    limit = inputs.services["chat"].context_limit()
    too_long = (trace.input_tokens + trace.output_tokens) > limit
    assert s["failed"]["context"] == int(too_long.sum())
    assert s["slo_attainment"] <= 1.0 - too_long.mean() + 1e-9
    assert 0.5 < s["slo_attainment"]
    # Every request went to a replica while the gateway could route to it.
    arr = v.requests.arrival_s
    first_try = (v.retries == 0) & (v.replica >= 0)
    for k, r in enumerate(inputs.fleet):
        mine = arr[first_try & (v.replica == k)]
        if mine.size:
            ok = np.zeros(mine.size, dtype=bool)
            for a, b in routable_windows(r):
                ok |= (mine >= a) & (mine < b)
            assert ok.all(), r.name
    assert set(s["pools"]) - {"chat/-"} <= {f"chat/{r.pool}" for r in inputs.fleet}

    # The same from the command line: python -m daemon.judge --db URL --trace F --json
    import json

    from daemon.judge.__main__ import main

    capsys.readouterr()
    assert main(["--db", url, "--trace", str(AZURE_CONV), "--json"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")][-1]
    cli = json.loads(line)
    assert cli["slo_attainment"] == s["slo_attainment"] and cli["failed"] == s["failed"]


def test_requests_from_several_services():
    a = Requests.build([1.0, 2.0], [10, 20], [5, 5], "chat")
    b = Requests.build([1.5], [30], [7], "code")
    both = Requests.concat([a, b])
    assert both.services == ("chat", "code") and both.service.tolist() == [0, 0, 1]
    assert both.input_tokens.tolist() == [10, 20, 30]
