"""The local OpenAI-compatible replica (providers/local_replica.py) as a real process, and the
simulated cloud running its instances as such processes (replica_processes)."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest

from daemon.config import SimulatedProviderConfig
from daemon.domain import Market
from providers.base import InstanceStatus, LaunchRequest
from providers.local_replica import LatencyModel, count_tokens, one_two_five
from providers.replica_processes import ReplicaProcesses
from providers.simulated import SimulatedProvider
from tests.conftest import REPO


@pytest.fixture
def replica(tmp_path):
    log = tmp_path / "requests.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "providers.local_replica", "--port", "0", "--max-model-len", "64",
                          "--force-include-usage", "--request-log", str(log), "--tpot-s", "0.005", "--model", "m"],
                         stdout=subprocess.PIPE, cwd=REPO, text=True)
    port = json.loads(p.stdout.readline())["port"]
    yield f"http://127.0.0.1:{port}", p, log
    if p.poll() is None:
        p.kill()
    p.wait()


def _sse(resp):
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def test_json_and_streamed_answers_carry_usage(replica):
    url, _, log = replica
    r = httpx.post(url + "/v1/completions", json={"prompt": "one two three four", "max_tokens": 5})
    body = r.json()
    assert r.status_code == 200 and body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert len(body["choices"][0]["text"].split()) == 5
    with httpx.stream("POST", url + "/v1/chat/completions",
                      json={"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
                            "max_tokens": 3, "stream": True}) as resp:
        events = _sse(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:3]] == [" the", " a", " model"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 4  # forced usage chunk
    # The replica logs a request once it has sent its end: the client may read [DONE] first.
    deadline = time.monotonic() + 10
    while len(log.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["prompt_tokens"], x["output_tokens"], x["status"]) for x in rows] == [(4, 5, 200), (4, 3, 200)]


def test_past_the_context_is_400_like_vllm(replica):
    url, _, _ = replica
    r = httpx.post(url + "/v1/completions", json={"prompt": "w " * 60, "max_tokens": 5})
    assert r.status_code == 400 and r.json()["object"] == "error" and "64 tokens" in r.json()["message"]
    assert httpx.post(url + "/v1/completions", content=b"{nope").status_code == 400
    assert httpx.post(url + "/v1/nothing", json={}).status_code == 404


def test_metrics_use_vllm_names(replica):
    url, _, _ = replica
    for n in (1, 2, 3):
        httpx.post(url + "/v1/completions", json={"prompt": "a " * 10, "max_tokens": n})
    text = httpx.get(url + "/metrics").text
    assert 'vllm:request_success_total{finished_reason="length",model_name="m"} 3' in text
    assert 'vllm:request_prompt_tokens_bucket{model_name="m",le="10.0"} 3' in text
    assert 'vllm:request_generation_tokens_sum{model_name="m"} 6.0' in text
    assert "vllm:time_to_first_token_seconds_count" in text and "vllm:num_requests_running" in text


def test_sigterm_lets_streams_finish(replica):
    url, proc, _ = replica
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "a", "max_tokens": 60, "stream": True}) as resp:
        it = resp.iter_lines()
        next(it)
        proc.send_signal(signal.SIGTERM)
        rest = [ln for ln in it if ln.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and len(rest) == 61  # the 59 other tokens, usage, DONE
    assert proc.wait(timeout=10) == 0


def test_boot_time_and_latency_model(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "providers.local_replica", "--port", "0", "--boot-s", "0.6"],
                         stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        url = f"http://127.0.0.1:{json.loads(p.stdout.readline())['port']}"
        assert httpx.get(url + "/health").status_code == 503
        assert httpx.post(url + "/v1/completions", json={"prompt": "a"}).status_code == 503
        time.sleep(0.8)
        assert httpx.get(url + "/health").status_code == 200
    finally:
        p.kill()
        p.wait()
    m = LatencyModel(ttft_base_s=0.01, prefill_tokens_per_s=1000, tpot_s=0.02, slowdown_per_request=0.1)
    assert m.ttft(500, 0) == pytest.approx(0.51) and m.ttft(500, 10) == pytest.approx(1.01)
    assert m.tpot(5) == pytest.approx(0.03)
    assert one_two_five(100) == (1, 2, 5, 10, 20, 50, 100) and count_tokens(" a  b\nc ") == 3


def test_simulated_cloud_runs_replicas_as_processes(tmp_path, clock):
    cfg = SimulatedProviderConfig(launch_latency_s=(1.0, 1.0), stockout_probability=0.0,
                                  launch_failure_probability=0.0, spot_preemptions_per_hour=0.0,
                                  replica_processes=True, replica_dir=str(tmp_path / "rep"),
                                  replica_args=["--max-model-len", "128"])
    prov = SimulatedProvider(cfg, clock)
    try:
        od = next(o for o in prov.offerings() if o.market is Market.ON_DEMAND)
        prov.launch(LaunchRequest("i-1", "chat", "m", od))
        assert prov.list()[0].status is InstanceStatus.PENDING and prov.list()[0].endpoint is None
        clock.advance(2)
        deadline = time.time() + 20
        while prov.list()[0].status is InstanceStatus.PENDING and time.time() < deadline:
            time.sleep(0.1)  # the launch latency passed; now the process must answer /health
        inst = prov.list()[0]
        assert inst.status is InstanceStatus.RUNNING and inst.endpoint.startswith("http://127.0.0.1:")
        models = httpx.get(inst.endpoint + "/v1/models").json()
        assert models["data"][0]["max_model_len"] == 128
        pid = prov._processes.pid("i-1")
        prov.terminate("i-1")
        deadline = time.time() + 10
        while prov._processes.alive("i-1") and time.time() < deadline:
            time.sleep(0.05)
        assert not prov._processes.alive("i-1")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        prov.close()


def test_spot_loss_sigkills_the_replica_and_a_dead_one_is_failed(tmp_path, clock):
    cfg = SimulatedProviderConfig(launch_latency_s=(0.0, 0.0), stockout_probability=0.0,
                                  launch_failure_probability=0.0, spot_preemptions_per_hour=50.0,
                                  replica_processes=True, replica_dir=str(tmp_path / "rep"))
    prov = SimulatedProvider(cfg, clock)
    try:
        spot = next(o for o in prov.offerings() if o.market is Market.SPOT)
        od = next(o for o in prov.offerings() if o.market is Market.ON_DEMAND)
        clock.advance(1)
        prov.launch(LaunchRequest("s-1", "chat", "m", spot))
        prov.launch(LaunchRequest("o-1", "chat", "m", od))
        deadline = time.time() + 20
        while any(i.status is InstanceStatus.PENDING for i in prov.list()) and time.time() < deadline:
            time.sleep(0.1)
        procs = prov._processes
        assert procs.alive("s-1") and procs.alive("o-1")
        os.kill(procs.pid("o-1"), signal.SIGKILL)  # the machine broke on its own
        procs._procs["o-1"].wait(timeout=5)
        for _ in range(200):  # at 50 losses per hour per zone, hours pass until the spot zone goes
            clock.advance(600)
            if prov.list() and {i.name: i.status for i in prov.list()}.get("s-1") is InstanceStatus.PREEMPTED:
                break
        states = {i.name: i for i in prov.list()}
        assert states["s-1"].status is InstanceStatus.PREEMPTED and not procs.alive("s-1")
        assert procs._procs["s-1"].returncode == -signal.SIGKILL
        assert states["o-1"].status is InstanceStatus.FAILED and "exited" in states["o-1"].detail
    finally:
        prov.close()


def test_replica_processes_reattach_after_a_restart(tmp_path):
    a = ReplicaProcesses(tmp_path)
    a.start("i-9")
    deadline = time.time() + 20
    while not a.healthy("i-9") and time.time() < deadline:
        time.sleep(0.05)
    b = ReplicaProcesses(tmp_path)  # a provider restarted on the same directory
    try:
        assert b.alive("i-9") and b.healthy("i-9") and b.endpoint("i-9") == a.endpoint("i-9")
        b.start("i-9")  # idempotent: no second process
        assert b.pid("i-9") == a.pid("i-9")
    finally:
        a.stop_all()
    assert not b.alive("i-9")
