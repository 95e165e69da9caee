"""fleetd's metrics (daemon/metrics.py): built from a real store, linted by promtool, scraped by a
real Prometheus server (scripts/deps-prometheus.sh installs it; the test starts it on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest

from daemon.domain import Market, Offering
from daemon.lifecycle import Reason, State
from daemon.metrics import MAX_VALUES_PER_LABEL, FleetMetrics, TickSample, event_cursor, sample_from_store, start_exporter
from daemon.store.repo import Store
from tests.conftest import T0
from tests.live_support import free_port

SPOT = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.46)
OD = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.ON_DEMAND, 1.006)


def _launch(s, iid, off, at, to=State.RUNNING):
    row = Store.create_instance(s, instance_id=iid, name=f"fleet-{iid}", service="chat", provider="sim",
                                offering=off, at=at, reason=Reason.LAUNCH_REQUESTED, decision_id=None)
    Store.transition(s, row, State.PROVISIONING, Reason.LAUNCH_ACCEPTED, at)
    if to is State.RUNNING:
        Store.transition(s, row, State.RUNNING, Reason.BECAME_READY, at + timedelta(minutes=3))
    return row


def _decision(s, at, **kw):
    d = Store.start_decision(s, at)
    d.outcome = "applied"
    d.plan_status = kw.get("status", "optimal")
    d.solve_seconds = 0.42
    d.planned_cost_per_hour = 2.0
    d.forecast = {"chat": {"rate_rps": 5.5}}
    d.plan = {"gap": 0.001}
    return d


def _fleet(store):
    from daemon.domain import DemandWindow

    with store.session() as s:
        a = _launch(s, "chat-000001", SPOT, T0)
        _launch(s, "chat-000002", SPOT, T0)
        _launch(s, "chat-000003", OD, T0, to=State.PROVISIONING)
        Store.add_demand_windows(s, [DemandWindow("chat", T0 - timedelta(minutes=1), 60.0, ((120.0,),), 0, 0),
                                     DemandWindow("chat", T0, 60.0, ((300.0,),), 0, 0)])
        d = _decision(s, T0 + timedelta(minutes=5))
        return d.id


def test_sample_from_the_store_and_counters_count_each_event_once(store):
    with store.session() as s:
        start = event_cursor(s)
    did = _fleet(store)
    with store.session() as s:
        sample, cursor = sample_from_store(s, did, start, tick_seconds=0.8)
    assert sample.fleet == {("chat", "A10G", 1, "spot", "running"): 2, ("chat", "A10G", 1, "on-demand", "provisioning"): 1}
    assert sample.cost_per_hour == pytest.approx(0.46 * 2 + 1.006)
    assert sample.observed_rps == {"chat": pytest.approx(5.0)}  # the latest window: 300 requests / 60 s
    assert sample.forecast_rps == {"chat": 5.5} and sample.plan_status == "optimal" and sample.gap == 0.001
    assert sample.launches == {("chat", "A10G", "spot"): 2, ("chat", "A10G", "on-demand"): 1}
    m = FleetMetrics()
    m.record_tick(sample)
    # the next tick: one spot instance preempted, one terminated
    with store.session() as s:
        from daemon.store.schema import Instance

        Store.transition(s, s.get(Instance, "chat-000001"), State.PREEMPTED, Reason.PREEMPTED, T0 + timedelta(minutes=6))
        r2 = s.get(Instance, "chat-000002")
        Store.transition(s, r2, State.TERMINATING, Reason.SCALE_DOWN, T0 + timedelta(minutes=6))
        Store.transition(s, r2, State.TERMINATED, Reason.TERMINATE_CONFIRMED, T0 + timedelta(minutes=7))
        did2 = _decision(s, T0 + timedelta(minutes=7), status="reused").id
    with store.session() as s:
        sample2, cursor2 = sample_from_store(s, did2, cursor, tick_seconds=0.1)
    assert cursor2 > cursor
    assert sample2.launches == {} and sample2.preemptions == {("chat", "A10G", "spot"): 1}
    assert sample2.terminations == {("chat", "A10G", "spot"): 1}
    m.record_tick(sample2)
    text = m.exposition().decode()
    assert 'gpufleet_launches_total{gpu="A10G",market="spot",service="chat"} 2.0' in text
    assert 'gpufleet_preemptions_total{gpu="A10G",market="spot",service="chat"} 1.0' in text
    assert 'gpufleet_terminations_total{gpu="A10G",market="spot",service="chat"} 1.0' in text
    # the emptied spot pool's series is gone, the on-demand one still there
    assert 'state="running"' not in text
    assert 'gpufleet_instances{gpu="A10G",gpu_count="1",market="on-demand",service="chat",state="provisioning"} 1.0' in text
    assert 'gpufleet_plan_status{status="reused"} 1.0' in text and 'gpufleet_plan_status{status="optimal"} 0.0' in text
    assert "gpufleet_plan_solve_duration_seconds_count 1.0" in text  # a reused plan is not a solve
    assert 'gpufleet_ticks_total{outcome="applied"} 2.0' in text


def test_label_cardinality_is_bounded():
    m = FleetMetrics()
    for k in range(300):  # many instances, many pools, odd states: the series stay few
        fleet = {(f"svc{k % 100}", f"GPU{k % 90}", 1, "spot", "weird-state"): 1, ("chat", "A10G", 1, "nonsense", "running"): k}
        m.record_tick(TickSample(at=T0 + timedelta(minutes=k), outcome="whatever", fleet=fleet,
                                 plan_status="time_limit: gap 0.4 > accept_gap 0.25"))
    text = m.exposition().decode()
    services = {line.split('service="')[1].split('"')[0] for line in text.splitlines() if 'service="' in line}
    assert len(services) <= MAX_VALUES_PER_LABEL + 1 and "other" in services
    states = {line.split('state="')[1].split('"')[0] for line in text.splitlines() if 'state="' in line}
    assert states <= {str(s) for s in State} | {"other"}
    assert 'gpufleet_plan_status{status="time_limit"} 1.0' in text
    assert 'gpufleet_ticks_total{outcome="other"} 300.0' in text
    series = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(series) < 400


def test_names_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian prometheus package: scripts/deps-prometheus.sh)")
    m = FleetMetrics()
    m.record_tick(TickSample(at=T0, outcome="applied", tick_seconds=0.2, fleet={("chat", "A10G", 1, "spot", "running"): 2},
                             cost_per_hour=0.92, plan_status="optimal", solve_seconds=0.3, gap=0.0,
                             launches={("chat", "A10G", "spot"): 2}, forecast_rps={"chat": 3.0}, observed_rps={"chat": 2.5}))
    m.set_role(True)
    r = subprocess.run([promtool, "check", "metrics"], input=m.exposition(), capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == b"" and r.stderr.strip() == b"", (r.stdout, r.stderr)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read()


def _query(base: str, q: str):
    return json.loads(_get(base + "/api/v1/query?query=" + urllib.parse.quote(q)))["data"]["result"]


def test_a_real_prometheus_scrapes_the_exporter(tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus binary not installed (run scripts/deps-prometheus.sh)")
    m = FleetMetrics()
    m.set_role(True)
    m.record_tick(TickSample(at=T0, outcome="applied", tick_seconds=0.7,
                             fleet={("chat", "A10G", 1, "spot", "running"): 3, ("chat", "L4", 1, "on-demand", "running"): 1},
                             cost_per_hour=2.18, planned_cost_per_hour=2.18, plan_status="optimal", solve_seconds=0.25,
                             gap=0.0, launches={("chat", "A10G", "spot"): 4}, preemptions={("chat", "A10G", "spot"): 1},
                             forecast_rps={"chat": 7.5}, observed_rps={"chat": 6.0}))
    exporter = start_exporter(m, "127.0.0.1", 0)
    assert exporter.address[0] == "127.0.0.1"
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                   "scrape_configs:\n  - job_name: fleetd\n    static_configs:\n"
                   f"      - targets: ['127.0.0.1:{exporter.port}']\n")
    log = tmp_path / "prometheus.log"
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        res = []
        while time.time() < deadline:
            try:
                res = _query(base, 'up{job="fleetd"}')
                if res and res[0]["value"][1] == "1":
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail("prometheus exited: " + log.read_text()[-2000:])
            time.sleep(0.3)
        assert res and res[0]["value"][1] == "1", log.read_text()[-2000:]
        assert float(_query(base, "gpufleet_fleet_cost_usd_per_hour")[0]["value"][1]) == pytest.approx(2.18)
        by_gpu = {r["metric"]["gpu"]: float(r["value"][1])
                  for r in _query(base, 'sum by (gpu) (gpufleet_instances{service="chat",state="running"})')}
        assert by_gpu == {"A10G": 3.0, "L4": 1.0}
        assert float(_query(base, 'gpufleet_launches_total{market="spot"}')[0]["value"][1]) == 4.0
        assert float(_query(base, "gpufleet_leader")[0]["value"][1]) == 1.0
        assert float(_query(base, 'gpufleet_forecast_requests_per_second{service="chat"}')[0]["value"][1]) == 7.5
        # the exporter keeps serving updates: a second tick is seen at the next scrape
        m.record_tick(TickSample(at=T0 + timedelta(minutes=1), outcome="failed", tick_seconds=1.0))
        deadline = time.time() + 15
        while time.time() < deadline:
            r = _query(base, "gpufleet_tick_failures_total")
            if r and float(r[0]["value"][1]) == 1.0:
                break
            time.sleep(0.3)
        assert r and float(r[0]["value"][1]) == 1.0
        # nothing in the scrape names an instance
        assert not _query(base, '{__name__=~"gpufleet_.*", instance_id=~".+"}')
        assert "fleet-chat" not in _get(f"http://127.0.0.1:{exporter.port}/metrics").decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        exporter.stop()


def test_the_exporter_names_the_address_it_cannot_listen_on():
    m = FleetMetrics()
    first = start_exporter(m, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
            start_exporter(m, "127.0.0.1", first.port)
    finally:
        first.stop()
