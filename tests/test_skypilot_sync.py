"""The provider's status sync, with the SkyPilot API server stood in for at the
`SkyClient` seam (the network edge) and the clock injected.

Cluster situations a local Slurm cluster cannot produce (a cloud that STOPs
spot instances, INIT with an abnormal reason, a capacity error with failover
history) are played here with SkyPilot's own exception classes. The real
server path is covered by test_skypilot_e2e.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from skypilot_support import sky_env  # noqa: E402,F401

from daemon.config import SkyPilotProviderConfig  # noqa: E402
from daemon.domain import Market, Offering  # noqa: E402
from providers.base import FailureKind, InstanceStatus, LaunchError, LaunchRequest, Provider  # noqa: E402
from providers.skypilot import SkyPilotProvider, classify_failure  # noqa: E402

SPOT = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.4591)
ONDEMAND = Offering("aws", "us-east-1", "us-east-1b", "g5.xlarge", "A10G", 1, Market.ON_DEMAND, 1.006)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def tick(self, s: float):
        self.now += timedelta(seconds=s)


@dataclass
class _LR:  # what SkyPilot's handle.launched_resources exposes
    cloud: str
    region: str
    zone: str | None
    instance_type: str
    use_spot: bool
    accelerators: dict


@dataclass
class _Handle:
    head_ip: str
    launched_resources: _LR


def _handle(o: Offering, ip="10.0.0.7") -> _Handle:
    return _Handle(ip, _LR(o.cloud.upper(), o.region, o.zone, o.instance_type, o.market is Market.SPOT,
                           {o.gpu: o.gpu_count}))


@dataclass
class FakeServer:
    """Requests and cluster records as the SkyPilot API server would return them."""

    requests: dict = field(default_factory=dict)  # rid -> [state, result or exception]
    clusters: dict = field(default_factory=dict)  # name -> record dict
    launches: list = field(default_factory=list)
    downs: list = field(default_factory=list)
    cancelled: list = field(default_factory=list)
    launch_rids: dict = field(default_factory=dict)
    n: int = 0

    def _rid(self):
        self.n += 1
        return f"req-{self.n}"

    def launch(self, task, cluster_name):
        rid = self._rid()
        self.launches.append((cluster_name, task))
        self.launch_rids[cluster_name] = rid
        self.requests[rid] = ["RUNNING", None]
        self.clusters[cluster_name] = {"name": cluster_name, "status": "INIT", "handle": None,
                                       "last_creation_yaml": f"name: {task.name}\n"}
        return rid

    def finish_launch(self, name, offering, error=None):
        rid = self.launch_rids[name]
        if error is None:
            h = _handle(offering)
            self.requests[rid] = ["SUCCEEDED", (1, h)]
            self.clusters[name].update(status="UP", handle=h)
        else:
            self.requests[rid] = ["FAILED", error]
            self.clusters.pop(name, None)

    def down(self, name):
        rid = self._rid()
        self.downs.append(name)
        self.requests[rid] = ["RUNNING", None]
        return rid

    def cancel(self, rids):
        self.cancelled += rids

    def request_states(self, rids):
        return {r: self.requests[r][0] for r in rids if r in self.requests}

    def result(self, rid):
        state, value = self.requests[rid]
        if isinstance(value, BaseException):
            raise value
        return value

    def status(self, names=None, refresh=None):
        return [dict(r) for n, r in self.clusters.items() if names is None or n in names]


@pytest.fixture
def world(sky_env, tmp_path):
    clock = Clock()
    server = FakeServer()
    health = {"ok": True, "calls": []}

    def check(url, timeout):
        health["calls"].append(url)
        return health["ok"]

    cfg = SkyPilotProviderConfig(cluster_prefix="fleet", market_cooldown_s=600, serve_port=8000,
                                 health_path="/health")
    p = SkyPilotProvider(cfg, clock=clock, client=server, health_check=check)
    return p, server, clock, health


def _req(name, o=SPOT, service="chat"):
    return LaunchRequest(name=name, service=service, model="m", offering=o)


def _by_name(p):
    return {i.name: i for i in p.list()}


def test_is_a_provider(world):
    p, *_ = world
    assert isinstance(p, Provider) and p.name == "skypilot"


def test_launch_pending_then_running_only_when_healthy(world):
    p, server, clock, health = world
    p.launch(_req("a"))
    assert [c for c, _ in server.launches] == ["fleet-a"]  # cluster = <prefix>-<instance name>
    p.launch(_req("a"))  # idempotent while pending
    assert len(server.launches) == 1
    assert _by_name(p)["a"].status is InstanceStatus.PENDING
    server.finish_launch("fleet-a", SPOT)
    health["ok"] = False
    inst = _by_name(p)["a"]
    assert inst.status is InstanceStatus.PENDING and inst.endpoint is None
    assert health["calls"] == ["http://10.0.0.7:8000/health"]
    health["ok"] = True
    clock.tick(10)
    inst = _by_name(p)["a"]
    assert inst.status is InstanceStatus.RUNNING and inst.endpoint == "http://10.0.0.7:8000"
    assert inst.since == clock.now and inst.offering_key == SPOT.key
    assert p.healthy_endpoints() == {"A10Gx1": ["http://10.0.0.7:8000"]} and inst.healthy
    # A running server that stops answering leaves routing but stays RUNNING.
    health["ok"] = False
    inst = _by_name(p)["a"]
    assert inst.status is InstanceStatus.RUNNING and not inst.healthy
    assert p.healthy_endpoints() == {}


def test_names_round_trip_through_the_prefix(world):
    p, server, *_ = world
    p.launch(_req("inst-42"))
    p.launch(_req("fleet-7"))  # an instance name that happens to start with the prefix
    assert [c for c, _ in server.launches] == ["fleet-inst-42", "fleet-fleet-7"]
    assert set(_by_name(p)) == {"inst-42", "fleet-7"}
    p.terminate("inst-42")
    assert server.downs == ["fleet-inst-42"]
    with pytest.raises(LaunchError, match="torn down"):
        p.launch(_req("inst-42"))


@pytest.mark.parametrize("record,expect", [
    ({"status": "STOPPED", "last_event": "Instances stopped by the cloud"}, "STOPPED"),
    ({"status": "INIT", "init_status_reason": "1 of 1 nodes not running: preempted"}, "abnormal"),
    (None, "vanished"),
])
def test_spot_losses_become_preemptions_with_zone_lifetime_price(world, record, expect):
    p, server, clock, _ = world
    p.launch(_req("s"))
    server.finish_launch("fleet-s", SPOT)
    assert _by_name(p)["s"].status is InstanceStatus.RUNNING
    clock.tick(3600)
    if record is None:
        server.clusters.pop("fleet-s")
    else:
        server.clusters["fleet-s"].update(record)
    inst = _by_name(p)["s"]  # one sync
    assert inst.status is InstanceStatus.PREEMPTED
    assert expect in inst.detail
    assert "zone=aws/us-east-1/us-east-1a" in inst.detail and "lifetime_s=3600" in inst.detail
    assert "price_per_hour=0.4591" in inst.detail
    loss = p.loss("s")
    assert (loss["status"], loss["zone"], loss["lifetime_s"], loss["price_per_hour"], loss["market"]) == (
        "preempted", "aws/us-east-1/us-east-1a", 3600.0, 0.4591, "spot")
    assert SPOT.key in p.unavailable_markets()
    assert p.healthy_endpoints() == {}
    clock.tick(601)
    assert SPOT.key not in p.unavailable_markets()  # cooldown over


def test_on_demand_loss_is_a_failure_and_no_market_cooldown(world):
    p, server, clock, _ = world
    p.launch(_req("o", ONDEMAND))
    server.finish_launch("fleet-o", ONDEMAND)
    p.list()
    server.clusters.pop("fleet-o")
    inst = _by_name(p)["o"]
    assert inst.status is InstanceStatus.FAILED and "vanished" in inst.detail
    assert p.unavailable_markets() == set()


def test_init_during_launch_is_pending_not_lost(world):
    p, server, *_ = world
    p.launch(_req("i"))
    server.clusters["fleet-i"]["init_status_reason"] = "provisioning"
    assert _by_name(p)["i"].status is InstanceStatus.PENDING


def _capacity_error():
    from sky import exceptions
    from sky.provision.common import ProvisionerError

    inner = ProvisionerError("Failed to launch instances.")
    inner.errors = [{"code": "InsufficientInstanceCapacity",
                     "message": "We currently do not have sufficient g5.xlarge capacity in us-east-1a."}]
    return exceptions.ResourcesUnavailableError("Failed to provision all possible launchable resources.",
                                                failover_history=[inner])


def test_failed_launch_is_classified_and_cools_the_market(world):
    p, server, clock, _ = world
    p.launch(_req("f"))
    server.finish_launch("fleet-f", SPOT, error=_capacity_error())
    inst = _by_name(p)["f"]
    assert inst.status is InstanceStatus.FAILED and inst.failure is FailureKind.NO_CAPACITY
    assert "Failed to provision" in inst.detail
    assert SPOT.key in p.unavailable_markets()
    with pytest.raises(LaunchError) as err:  # the planner should not have asked; refuse outright
        p.launch(_req("g"))
    assert err.value.kind is FailureKind.NO_CAPACITY and "cooldown" in str(err.value)


def test_refused_submission_raises_classified_launch_error(world):
    from sky import exceptions

    p, server, *_ = world

    def refuse(task, name):
        raise exceptions.NoCloudAccessError("Cloud access is not set up. Run: sky check")

    server.launch = refuse
    with pytest.raises(LaunchError) as err:
        p.launch(_req("r"))
    assert err.value.kind is FailureKind.CREDENTIALS
    assert p.list() == []


def test_terminate_is_idempotent_and_cancels_an_inflight_launch(world):
    p, server, *_ = world
    p.launch(_req("t"))
    p.terminate("t")
    p.terminate("t")
    assert server.downs == ["fleet-t"]
    assert len(server.cancelled) == 1
    server.requests["req-1"] = ["CANCELLED", RuntimeError("cancelled")]
    server.requests["req-2"][0] = "SUCCEEDED"
    server.clusters.pop("fleet-t")
    inst = _by_name(p)["t"]
    assert inst.status is InstanceStatus.TERMINATED and inst.failure is None
    p.terminate("unknown")  # never seen: still fine
    server.requests["req-3"] = ["FAILED", __import__("sky").exceptions.ClusterDoesNotExist("no such cluster")]
    assert _by_name(p)["unknown"].status is InstanceStatus.TERMINATED


def test_failed_down_is_retried_by_the_next_terminate(world):
    p, server, *_ = world
    p.launch(_req("d"))
    server.finish_launch("fleet-d", SPOT)
    p.list()
    p.terminate("d")
    server.requests["req-2"] = ["FAILED", RuntimeError("ssh timed out")]
    inst = _by_name(p)["d"]
    assert inst.status is not InstanceStatus.TERMINATED and "down failed" in inst.detail
    p.terminate("d")
    assert server.downs == ["fleet-d", "fleet-d"]


def test_restart_finds_our_clusters_and_only_ours(world, sky_env):
    p, server, clock, health = world
    p.launch(_req("k"))
    server.finish_launch("fleet-k", SPOT)
    p.launch(_req("z", ONDEMAND))
    server.finish_launch("fleet-z", ONDEMAND)
    server.clusters["other-cluster"] = {"name": "other-cluster", "status": "UP", "handle": None}
    # A new daemon process: no memory, same SkyPilot.
    fresh = SkyPilotProvider(p.cfg.model_copy(update={"orphans": "adopt"}), clock=clock, client=server,
                             health_check=lambda u, t: True)
    found = _by_name(fresh)
    assert set(found) == {"k", "z"}  # not other people's clusters
    assert found["k"].status is InstanceStatus.RUNNING and found["k"].offering_key == SPOT.key
    assert found["z"].offering_key == ONDEMAND.key
    assert fresh.healthy_endpoints("chat") == {"A10Gx1": ["http://10.0.0.7:8000", "http://10.0.0.7:8000"]}
    # Listing is all the provider does: which of them are orphans is the loop's to decide.
    assert server.downs == []
    fresh.terminate("z")
    fresh.terminate("z")
    assert server.downs == ["fleet-z"]  # not twice


def test_classification_of_skypilot_errors(sky_env):
    from sky import exceptions
    from sky.provision.common import ProvisionerError

    def prov(code, msg):
        e = ProvisionerError("provision failed")
        e.errors = [{"code": code, "message": msg}]
        return exceptions.ResourcesUnavailableError("Failed to acquire resources", failover_history=[e])

    assert classify_failure(_capacity_error()) is FailureKind.NO_CAPACITY
    assert classify_failure(prov("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources")) \
        is FailureKind.NO_CAPACITY
    assert classify_failure(prov("VcpuLimitExceeded", "You have requested more vCPU capacity than your limit")) \
        is FailureKind.QUOTA
    assert classify_failure(prov("QUOTA_EXCEEDED", "Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0")) \
        is FailureKind.QUOTA
    assert classify_failure(prov("UnauthorizedOperation", "You are not authorized to perform this operation")) \
        is FailureKind.CREDENTIALS
    assert classify_failure(exceptions.ResourcesUnavailableError(
        "Task requires AWS which is not enabled. To enable access, change the task cloud requirement or run: "
        "sky check aws")) is FailureKind.CREDENTIALS
    assert classify_failure(exceptions.CloudUserIdentityError("Failed to get AWS user identity")) \
        is FailureKind.CREDENTIALS
    assert classify_failure(exceptions.ResourcesUnavailableError("Failed to provision")) is FailureKind.NO_CAPACITY
    assert classify_failure(RuntimeError("disk full on the API server")) is FailureKind.OTHER


def test_launch_request_unknown_to_the_server_falls_back_to_the_cluster_record(world):
    p, server, *_ = world
    p.launch(_req("u"))
    p.launch(_req("v"))
    server.requests.clear()  # e.g. the API server lost its request table
    server.clusters["fleet-u"].update(status="UP", handle=_handle(SPOT))
    server.clusters.pop("fleet-v")
    got = _by_name(p)
    assert got["u"].status is InstanceStatus.RUNNING
    assert got["v"].status is InstanceStatus.FAILED and "not found" in got["v"].detail


def test_relaunch_after_restart_adopts_the_existing_cluster(world):
    """Intent written, cluster launched, daemon crashed, launch retried: no second launch."""
    p, server, clock, _ = world
    p.launch(_req("c"))
    server.finish_launch("fleet-c", SPOT)
    fresh = SkyPilotProvider(p.cfg, clock=clock, client=server, health_check=lambda u, t: True)
    fresh.launch(_req("c"))
    assert [c for c, _ in server.launches] == ["fleet-c"]
    assert _by_name(fresh)["c"].status is InstanceStatus.RUNNING
