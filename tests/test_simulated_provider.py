from datetime import timedelta

import pytest

from daemon.config import SimulatedProviderConfig
from daemon.domain import Market
from providers.base import InstanceStatus, LaunchError, LaunchRequest, Provider
from providers.simulated import OfferingsFileError, SimulatedProvider, load_offerings
from tests.conftest import SPOT_AWS3, need


def _req(p, name, market=Market.SPOT, zone="us-east-1a"):
    off = next(o for o in p.offerings() if o.market is market and o.zone == zone and o.gpu == "A10G")
    return LaunchRequest(name=name, service="chat", model="m", offering=off)


def test_bundled_offerings_are_real_multi_cloud_and_spot_cheaper():
    offs = load_offerings()
    assert {o.cloud for o in offs} >= {"aws", "gcp", "azure", "lambda"}
    g5 = [o for o in offs if o.instance_type == "g5.xlarge" and o.zone == "us-east-1a"]
    prices = {o.market: o.price_per_hour for o in g5}
    assert prices[Market.ON_DEMAND] == 1.006 and prices[Market.SPOT] == 0.4591  # SkyPilot catalog, pinned
    for o in offs:
        if o.market is Market.SPOT:
            od = next(x for x in offs if x.key == o.key.replace("/spot", "/on-demand"))
            assert o.price_per_hour < od.price_per_hour


def test_bad_offerings_file(tmp_path):
    p = tmp_path / "o.csv"
    p.write_text("cloud,region,zone,instance_type,gpu,gpu_count,on_demand,spot\naws,r,z,t,A10G,one,1,\n")
    with pytest.raises(OfferingsFileError, match=r"o.csv:2"):
        load_offerings(p)


def test_launch_is_async_idempotent_and_becomes_running(clock):
    p = SimulatedProvider(SimulatedProviderConfig(stockout_probability=0, launch_failure_probability=0,
                                                  spot_preemptions_per_hour=0, launch_latency_s=(100, 100)), clock)
    assert isinstance(p, Provider)
    p.launch(_req(p, "a"))
    p.launch(_req(p, "a"))
    assert [(i.name, i.status) for i in p.list()] == [("a", InstanceStatus.PENDING)]
    clock.advance(99)
    assert p.list()[0].status is InstanceStatus.PENDING
    clock.advance(2)
    inst = p.list()[0]
    assert inst.status is InstanceStatus.RUNNING and inst.since == clock.now - timedelta(seconds=1)
    p.terminate("a")
    p.terminate("a")
    p.terminate("never-existed")
    assert p.list()[0].status is InstanceStatus.TERMINATED


def test_stockouts_refuse_launches(clock):
    p = SimulatedProvider(SimulatedProviderConfig(stockout_probability=1.0), clock)
    with pytest.raises(LaunchError) as e:
        p.launch(_req(p, "a"))
    assert e.value.kind == "no_capacity"


def test_zone_hazard_preempts_spot_not_on_demand_and_is_deterministic(clock):
    def run():
        from tests.conftest import FakeClock

        c = FakeClock(clock.now)
        p = SimulatedProvider(SimulatedProviderConfig(stockout_probability=0, launch_failure_probability=0,
                                                      spot_preemptions_per_hour=0.5, launch_latency_s=(60, 60)), c)
        p.launch(_req(p, "spot"))
        p.launch(_req(p, "od", market=Market.ON_DEMAND))
        lost = None
        for _ in range(48 * 60):
            c.advance(60)
            st = {i.name: i for i in p.list()}
            if lost is None and st["spot"].status is InstanceStatus.PREEMPTED:
                lost = st["spot"].since
                assert st["od"].status is InstanceStatus.RUNNING
                break
        return lost

    first, second = run(), run()
    assert first is not None and first == second


def test_trace_replay_preempts_when_the_zone_trace_drops_to_zero(clock):
    from providers.spot_traces import load_trace

    trace = load_trace(need(SPOT_AWS3) / "us-east-1a_v100_1.json")
    # Start the replay at a tick where the zone is available and find when it drops.
    start = next(k for k, v in enumerate(trace.values) if v > 0 and k > 0 and trace.values[k - 1] == 0)
    drop = next(k for k in range(start, len(trace.values)) if trace.values[k] == 0)
    cfg = SimulatedProviderConfig(spot_trace_dir=str(SPOT_AWS3), spot_trace_offset_s=start * trace.gap_seconds,
                                  stockout_probability=0, launch_failure_probability=0, launch_latency_s=(10, 10))
    p = SimulatedProvider(cfg, clock)
    t0 = clock.now
    p.launch(_req(p, "s"))
    clock.advance((drop - start) * trace.gap_seconds + 5)
    inst = p.list()[0]
    assert inst.status is InstanceStatus.PREEMPTED
    assert inst.since == t0 + timedelta(seconds=(drop - start) * trace.gap_seconds)
    with pytest.raises(LaunchError):  # no capacity while the trace says 0
        p.launch(_req(p, "s2"))


def test_state_file_keeps_machines_across_a_restart(clock, tmp_path):
    cfg = SimulatedProviderConfig(stockout_probability=0, launch_failure_probability=0, spot_preemptions_per_hour=0,
                                  launch_latency_s=(30, 30), state_file=str(tmp_path / "cloud.json"))
    p = SimulatedProvider(cfg, clock)
    p.launch(_req(p, "a", market=Market.ON_DEMAND))
    p.launch(_req(p, "b"))
    clock.advance(10)
    p.list()
    again = SimulatedProvider(cfg, clock)  # the daemon restarted; the cloud did not
    clock.advance(30)
    assert {i.name: i.status for i in again.list()} == {"a": InstanceStatus.RUNNING, "b": InstanceStatus.RUNNING}
    again.launch(_req(again, "a", market=Market.ON_DEMAND))  # still idempotent by name
    assert len(again.list()) == 2
