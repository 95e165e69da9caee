"""The judge's gateway and lifecycles: routing tables, health, drains, preemption notice, retries."""

import numpy as np
import pytest

from daemon.config import BucketConfig
from daemon.judge import (MARKET_NOTICE_S, JudgeInputs, JudgeOptions, ReplicaSpan, Requests, RoutingTable,
                          ServiceSpec, judge, notice_for)
from daemon.judge.judge import routable_windows

GRID = BucketConfig().grid()  # input edges 0, 256, 1024, 4096, 16384
MODEL = "meta-llama/Llama-2-7b-hf"
SVC = {"chat": ServiceSpec("chat", MODEL, ttft_slo_s=2.0, tpot_slo_ms=120.0)}


def rep(name, gpu="A10G", ready=0.0, end=None, **kw):
    return ReplicaSpan(name, "chat", kw.pop("pool", f"{gpu}x1"), gpu, 1, kw.pop("market", "spot"),
                       kw.pop("cloud", "aws"), ready, end, **kw)


def uniform_load(rate, span, inp=(300, 900), out=(20, 120), seed=2, start=0.0):
    rng = np.random.default_rng(seed)
    n = int(rate * span)
    t = start + np.sort(rng.uniform(0, span, n))
    return t, rng.integers(*inp, n), rng.integers(*out, n)


def run(t, inp, out, fleet, routing=(), **opts):
    rq = Requests.build(t, inp, out, "chat")
    return judge(JudgeInputs(rq, tuple(fleet), tuple(routing), GRID, SVC), JudgeOptions(**opts))


def arrivals_on(v, k):
    return v.requests.arrival_s[v.replica == k]


def test_notice_per_cloud_is_the_markets():
    assert notice_for("aws") == 120.0 and notice_for("GCP") == 30.0 and notice_for("azure") == 30.0
    assert notice_for("lambda") == 0.0 and set(MARKET_NOTICE_S) == {"aws", "gcp", "azure"}


def test_never_routes_to_a_booting_draining_or_noticed_replica():
    fleet = [
        rep("always", ready=0.0),
        rep("late", ready=100.0, end=620.0, drain_at=500.0),  # boots until 100, drains from 500
        rep("lost", ready=50.0, end=800.0, preempted=True, notice_s=120.0),  # notice from 680
        rep("paused", ready=0.0, out_of_routing=((200.0, 300.0),)),  # a drain that was reversed
        rep("never", ready=None, end=None),
    ]
    t, inp, out = uniform_load(4.0, 1000.0)
    v = run(t, inp, out, fleet)
    assert (v.status == 0).all()
    late, lost, paused = arrivals_on(v, 1), arrivals_on(v, 2), arrivals_on(v, 3)
    assert late.size and late.min() >= 100.0 and late.max() < 500.0
    assert lost.size and lost.min() >= 50.0 and lost.max() < 680.0
    assert paused.size and not ((paused >= 200.0) & (paused < 300.0)).any()
    assert not (v.replica == 4).any()
    assert routable_windows(fleet[3]) == [(0.0, 200.0), (300.0, float("inf"))]


def test_routing_shares_follow_the_table_within_sampling_error():
    fleet = [rep("a1"), rep("a2"), rep("h1", gpu="H100", market="on-demand"), rep("l1", gpu="L4")]
    table0 = RoutingTable.from_routes(0.0, [
        {"service": "chat", "input_bucket": 1, "pool": "A10Gx1", "weight": 0.3},
        {"service": "chat", "input_bucket": 1, "pool": "H100x1", "weight": 0.7},
        {"service": "chat", "input_bucket": 0, "pool": "L4x1", "weight": 1.0},
    ])
    table1 = RoutingTable.from_routes(1000.0, [  # a later decision moves bucket 1 to L4
        {"service": "chat", "input_bucket": 1, "pool": "L4x1", "weight": 1.0},
    ])
    t, inp, out = uniform_load(3.0, 2000.0, inp=(256, 1024), out=(5, 30))
    v = run(t, inp, out, fleet, [table0, table1])
    pools = v.pools()
    before = v.requests.arrival_s < 1000.0
    n = int(before.sum())
    share = float((pools[before] == "A10Gx1").sum()) / n
    sigma = (0.3 * 0.7 / n) ** 0.5
    assert abs(share - 0.3) < 4 * sigma
    assert float((pools[before] == "H100x1").sum()) / n == pytest.approx(0.7, abs=4 * sigma)
    assert (pools[~before] == "L4x1").all()
    assert not v.fallback.any()
    # Both A10G replicas share their pool's traffic (least outstanding requests).
    a1, a2 = (v.replica == 0).sum(), (v.replica == 1).sum()
    assert min(a1, a2) > 0.35 * (a1 + a2)


def test_routes_only_among_pools_with_a_healthy_replica_and_counts_fallback():
    # The plan routes to H100 and L4; the H100 is still booting for the first 300 s, the L4 never comes.
    fleet = [rep("h1", gpu="H100", ready=300.0), rep("a1", ready=0.0)]
    table = RoutingTable.from_routes(0.0, [
        {"service": "chat", "input_bucket": 1, "pool": "H100x1", "weight": 0.5},
        {"service": "chat", "input_bucket": 1, "pool": "L4x1", "weight": 0.5},
    ])
    t, inp, out = uniform_load(1.0, 600.0, inp=(256, 1024))
    v = run(t, inp, out, fleet, [table])
    early = v.requests.arrival_s < 300.0
    assert v.fallback[early].all() and (v.pools()[early] == "A10Gx1").all()  # a gateway's default backend
    assert not v.fallback[~early].any() and (v.pools()[~early] == "H100x1").all()
    assert v.summary()["fallback_routed"] == int(early.sum())


def test_no_healthy_replica_fails_the_request():
    v = run([10.0, 200.0], [100, 100], [10, 10], [rep("a", ready=100.0)])
    assert v.status.tolist() == [2, 0]
    assert v.summary()["failed"]["no_replica"] == 1


def test_preemption_with_notice_loses_nothing_when_another_replica_has_room():
    # An AWS spot A100 is preempted at 600 s with the 2-minute notice; an H100 has room to spare.
    fleet = [rep("spot", gpu="A100-80GB", ready=0.0, end=600.0, preempted=True, notice_s=120.0),
             rep("od", gpu="H100", market="on-demand", ready=0.0)]
    t, inp, out = uniform_load(3.0, 1200.0, out=(50, 400))
    v = run(t, inp, out, fleet)
    assert (v.status == 0).all() and not (v.retries > 0).any()
    assert arrivals_on(v, 0).max() < 480.0
    # The same loss without notice: what the spot replica held is re-sent to the H100 and served,
    # its TTFT counted from the first arrival.
    cold = run(t, inp, out, [rep("spot", gpu="A100-80GB", ready=0.0, end=600.0, preempted=True),
                             fleet[1]])
    retried = cold.retries > 0
    assert retried.any() and (cold.status == 0).all() and (cold.replica[retried] == 1).all()
    assert (cold.requests.arrival_s[retried] < 600.0).all()
    assert (cold.e2e_s[retried] > 600.0 - cold.requests.arrival_s[retried]).all()


def test_preemption_without_any_other_replica_fails_what_it_held():
    fleet = [rep("spot", gpu="A100-80GB", ready=0.0, end=600.0, preempted=True)]
    t, inp, out = uniform_load(3.0, 1200.0, out=(50, 400))
    v = run(t, inp, out, fleet)
    lost = v.status == 3
    assert lost.any()
    assert (v.requests.arrival_s[lost] < 600.0).all() and (v.replica[lost] == 0).all()
    after = v.requests.arrival_s >= 600.0
    assert (v.status[after] == 2).all()  # no replica any more
    s = v.summary()
    assert s["failed"]["preempted"] == int(lost.sum()) and s["slo_attainment"] < 0.55


def test_retries_are_bounded():
    # Three replicas lost one after the other, no notice: a request is re-sent at most max_retries times.
    fleet = [rep(f"s{k}", ready=[0.0, 20.0, 35.0][k], end=30.0 + 10 * k, preempted=True) for k in range(3)]
    v = run([0.0], [500], [3000], fleet, max_retries=1)
    assert v.status[0] == 3 and v.retries[0] == 2
    v = run([0.0], [500], [3000], fleet, max_retries=5)
    assert v.status[0] == 3 and v.retries[0] == 3  # lost with the last replica: nowhere left


def test_drain_too_short_loses_requests_as_terminated():
    fleet = [rep("d", ready=0.0, drain_at=100.0, end=101.0)]
    v = run([99.0], [500], [2000], fleet)
    assert v.status[0] == 4


def test_cell_routes_are_summed_over_output_buckets():
    t = RoutingTable.from_routes(5.0, [
        {"service": "chat", "input_bucket": 2, "output_bucket": 0, "pool": "A10Gx1", "weight": 0.25},
        {"service": "chat", "input_bucket": 2, "output_bucket": 1, "pool": "A10Gx1", "weight": 0.25},
        {"service": "chat", "input_bucket": 2, "output_bucket": 1, "pool": "H100x1", "weight": 0.5},
        {"service": "chat", "input_bucket": 3, "output_bucket": None, "pool": "H100x1", "weight": 0.0},
    ])
    assert t.weights == {("chat", 2): (("A10Gx1", 0.5), ("H100x1", 0.5))}
