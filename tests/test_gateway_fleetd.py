"""The whole loop behind a real gateway: fleetd as a process drives a real HAProxy, and reads its
demand from what HAProxy served.

    load generator --(real streaming requests)--> HAProxy --> replica processes (local_replica)
         HAProxy's JSON log --(request-log feed, format haproxy)--> fleetd --> plan, launches
         fleetd's tick --(Runtime API: servers, maps)--> HAProxy

The simulated cloud runs each instance as a real local OpenAI-compatible server
(provider.simulated.replica_processes). The load steps from 4 to 12 req/s and back, so the
fleet must grow and shrink with nobody driving the gateway but fleetd. Checked:

- every request sent is answered 200 (no replica that was booting or draining was given one);
- each request HAProxy logged went to a replica that was running in the store at that moment;
- the demand the store holds is exactly what HAProxy logged for the service (the feed);
- the fleet grew after the step and shrank after it, and HAProxy's servers followed it;
- every tick's decision is applied.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from datetime import datetime

import pytest

from tests.live_support import Fleetd, decisions, fleetctl_status, running, wait_until
from tests.test_gateway_e2e import HAPROXY, HAProxy, _haproxy_skip_reason, free_port, gateway_records, send, new_request

pytestmark = [pytest.mark.slow, pytest.mark.skipif(_haproxy_skip_reason() is not None,
                                                    reason=_haproxy_skip_reason() or "")]

BASE_S, STEP_S, AFTER_S = 35.0, 35.0, 45.0


def rate_at(t: float) -> float:
    return 12.0 if BASE_S <= t < BASE_S + STEP_S else 4.0


def _config(tmp) -> str:
    port = free_port()
    row = "[3.0, 3.0]"  # req/s one replica sustains within SLO, per bucket (a fixed table: the test is the loop)
    return f"""
[store]
url = "sqlite:///{tmp / 'fleet.db'}"
[loop]
tick_interval_s = 2.0
window_s = 2.0
lead_time_s = 3
misfire_grace_s = 30
[metrics]
enabled = false
[buckets]
input_edges = [0, 128, 512, 2048]
output_edges = [0, 64, 4096]
[provider.simulated]
launch_latency_s = [1.0, 2.0]
stockout_probability = 0.0
launch_failure_probability = 0.0
spot_preemptions_per_hour = 0.0
state_file = "{tmp / 'cloud.json'}"
replica_processes = true
replica_args = ["--force-include-usage", "--ttft-base-s", "0.01", "--prefill-tokens-per-s", "20000", "--tpot-s", "0.008"]
[policy]
spot = false
scale_down_delay_s = 12
drain_s = 2
max_launches_per_tick = 10
max_terminations_per_tick = 10
[gateway]
enabled = true
state_dir = "{tmp / 'gw'}"
socket = "{tmp / 'admin.sock'}"
listen = "127.0.0.1:{port}"
gpu_counts = [1]
health_interval_s = 0.5
health_fall = 1
health_rise = 1
[[services]]
name = "chat"
gpus = ["A10G"]
min_replicas = 1
[services.demand]
kind = "request-log"
format = "haproxy"
path = "{tmp / 'haproxy.log'}"
lateness_s = 4
[[capacity]]
model = "meta-llama/Llama-3.1-8B-Instruct"
gpu = "A10G"
tputs = [{row}, {row}, {row}]
"""


async def _load(url: str, t0: float, until: float, rng: random.Random, out: list) -> None:
    import httpx

    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
        tasks = []
        t = time.time()
        while t < until:
            t += rng.expovariate(rate_at(t - t0))
            await asyncio.sleep(max(0.0, t - time.time()))
            s, body = new_request(rng)
            body["messages"][0]["content"] = body["messages"][0]["content"][:1500]  # within every replica's context
            out.append(s)
            tasks.append(asyncio.create_task(send(client, url, s, body)))
        await asyncio.gather(*tasks)


def test_fleetd_drives_haproxy_from_the_demand_haproxy_served(tmp_path):
    from daemon.config import load_config
    from daemon.gateway.render import render_haproxy_cfg
    from daemon.gateway.sync import Gateway

    cfg_path = tmp_path / "fleet.toml"
    cfg_path.write_text(_config(tmp_path))
    cfg = load_config(cfg_path)
    main = tmp_path / "haproxy.cfg"
    main.write_text(render_haproxy_cfg(cfg))
    Gateway(cfg).init_state_dir()
    hap = HAProxy(cfg, main, tmp_path / "haproxy.log")
    hap.start()
    fleetd = Fleetd(cfg_path, tmp_path)
    sent: list = []
    try:
        fleetd.start()
        # fleetd's first ticks launch min_replicas and sync HAProxy; then the load starts
        assert wait_until(lambda: (tmp_path / "fleet.db").exists() and running(fleetctl_status(tmp_path), "chat") >= 1,
                          60, 1.0), fleetd.log_text()[-3000:]
        time.sleep(4)
        t0 = time.time()
        samples = {}

        async def main_load():
            url = f"http://{cfg.gateway.listen}/v1/chat/completions"
            load = asyncio.create_task(_load(url, t0, t0 + BASE_S + STEP_S + AFTER_S, random.Random(7), sent))
            for at in (BASE_S - 2, BASE_S + STEP_S - 2, BASE_S + STEP_S + AFTER_S - 2):
                await asyncio.sleep(max(0.0, t0 + at - time.time()))
                samples[at] = await asyncio.to_thread(fleetctl_status, tmp_path)
            await load

        asyncio.run(main_load())
        records = gateway_records(hap, at_least=len(sent), wait_s=15)
        last_ts = max(r.timestamp for r in records)
        with sqlite3.connect(tmp_path / "fleet.db") as c:
            def counted() -> float:
                row = c.execute("SELECT cursor FROM demand_cursors WHERE service = 'chat'").fetchone()
                return json.loads(row[0]).get("emitted_until") or 0 if row else 0
            assert wait_until(lambda: counted() > last_ts, 40, 1.0), fleetd.log_text()[-3000:]
        assert fleetd.stop() == 0, fleetd.log_text()[-3000:]
    finally:
        if fleetd.alive():
            fleetd.kill()
        hap.stop()
        from providers.replica_processes import ReplicaProcesses

        ReplicaProcesses(tmp_path / "cloud.json.replicas", []).stop_all()

    # every request answered, none lost to a booting or draining replica
    bad = [(s.status, s.error) for s in sent if s.status != 200]
    assert len(sent) > 600 and bad == [], bad[:10]
    # each logged request went to a replica running at that moment
    with sqlite3.connect(tmp_path / "fleet.db") as c:
        spans = {n: (datetime.fromisoformat(r).timestamp(), datetime.fromisoformat(e).timestamp() if e else 1e18)
                 for n, r, e in c.execute("SELECT name, ready_at, ended_at FROM instances WHERE ready_at IS NOT NULL")}
        stored = c.execute("SELECT SUM(requests) FROM demand_windows WHERE service = 'chat'").fetchone()[0]
    served = [r for r in records if r.service == "chat"]
    assert len(served) == len(sent)
    outside = [(r.server, r.timestamp) for r in served
               if not any(r.server and r.server.endswith(n) and a - 1.0 <= r.timestamp <= b + 1.0
                          for n, (a, b) in spans.items())]
    assert outside == [], outside[:5]
    # the feed: the store's demand is exactly what HAProxy served
    assert int(round(stored)) == len(served)
    # the fleet followed the step, with nobody driving the gateway but fleetd
    before, peak, after = (running(samples[k], "chat") for k in sorted(samples))
    assert peak > before and after < peak, (before, peak, after)
    rows = decisions(tmp_path)
    assert [r for r in rows if r[1] != "applied"] == []
    assert "gateway_sync_failed" not in fleetd.log_text()
    print(f"\ngateway + fleetd: {len(sent)} requests, replicas {before} -> {peak} -> {after}, "
          f"{len(rows)} decisions, {len(spans)} instances")
