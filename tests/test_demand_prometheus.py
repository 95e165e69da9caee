"""The Prometheus source against a real Prometheus server scraping a vLLM-format metrics endpoint.

The test serves /metrics itself (the edge of the world we fake: a vLLM server)
and starts the Debian `prometheus` binary on 127.0.0.1 with a temporary config
and storage, scraping every second. Install it with scripts/deps-prometheus.sh.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

from daemon.domain import BucketGrid
from daemon.demand.errors import DemandInputError as SourceError
from daemon.demand.prometheus import PrometheusClient, PrometheusQueries, bucket_shares
from tests.live_support import free_port

GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))
# vLLM's 1-2-5 bucket edges (vllm/engine/metrics.py build_1_2_5_buckets)
PROMPT_EDGES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
GEN_EDGES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


def test_bucket_shares_interpolates_inside_source_buckets():
    # 10 requests <= 100 tokens, 10 more in (1000, 2000]
    cum = [(100.0, 10.0), (1000.0, 10.0), (2000.0, 20.0), (float("inf"), 20.0)]
    s = bucket_shares(cum, (0, 256, 1024, 4096))
    # our edge 1024 lies inside (1000, 2000]: (1023-1000)/1000 of those 10 fall below it
    assert s == pytest.approx([0.5, 0.5 * 23 / 1000, 0.5 * (1 - 23 / 1000)])
    assert bucket_shares([], (0, 10)) is None
    assert bucket_shares([(float("inf"), 0.0)], (0, 10)) is None


class FakeVllm:
    """Counters of a vLLM server that 'serves' requests at a fixed rate with two request sizes."""

    def __init__(self, rate: float):
        self.rate = rate
        self.n = 0
        self.prompt = []
        self.gen = []
        self.up = True
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self):
        k = 0
        while not self.stop.wait(1.0 / self.rate):
            with self.lock:
                # alternate: short prompt + long answer, long prompt + short answer
                p, g = (100, 600) if k % 2 == 0 else (2000, 50)
                self.n += 1
                self.prompt.append(p)
                self.gen.append(g)
                k += 1

    def exposition(self) -> str:
        with self.lock:
            n, prompt, gen = self.n, list(self.prompt), list(self.gen)
        return exposition(n, prompt, gen)


def exposition(n: int, prompt: list[int], gen: list[int]) -> str:
    """vLLM's request counter and token histograms (vllm/engine/metrics.py names), text format."""
    lab = 'model_name="llama"'
    out = [
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{finished_reason="stop",{lab}}} {float(n)}',
        f'vllm:request_success_total{{finished_reason="length",{lab}}} 0.0',
    ]
    for name, vals, edges in (("vllm:request_prompt_tokens", prompt, PROMPT_EDGES),
                              ("vllm:request_generation_tokens", gen, GEN_EDGES)):
        out.append(f"# TYPE {name} histogram")
        for e in edges:
            out.append(f'{name}_bucket{{le="{float(e)}",{lab}}} {float(sum(v <= e for v in vals))}')
        out.append(f'{name}_bucket{{le="+Inf",{lab}}} {float(len(vals))}')
        out.append(f"{name}_count{{{lab}}} {float(len(vals))}")
        out.append(f"{name}_sum{{{lab}}} {float(sum(vals))}")
    return "\n".join(out) + "\n"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read()


@contextlib.contextmanager
def start_prometheus(tmp_path, exposition_fn, is_up=lambda: True):
    """A metrics endpoint serving `exposition_fn()` and a real Prometheus scraping it every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus binary not installed (run scripts/deps-prometheus.sh)")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if not is_up():
                self.send_response(503)
                self.end_headers()
                return
            body = exposition_fn().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: vllm\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.server_address[1]}']\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 20
        while True:
            try:
                if b"Ready" in _get(base + "/-/ready"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("prometheus did not start: " + (tmp_path / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()


@pytest.fixture
def vllm_and_prometheus(tmp_path):
    fake = FakeVllm(rate=10.0)
    gen = threading.Thread(target=fake.run, daemon=True)
    gen.start()
    try:
        with start_prometheus(tmp_path, fake.exposition, lambda: fake.up) as base:
            yield fake, base
    finally:
        fake.stop.set()


def _wait_for_samples(base: str, n: int, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = json.loads(_get(base + "/api/v1/query?query=count_over_time(vllm:request_success_total%7Bfinished_reason%3D%22stop%22%7D%5B1m%5D)"))
        res = q["data"]["result"]
        if res and float(res[0]["value"][1]) >= n:
            return
        time.sleep(0.5)
    pytest.fail(f"prometheus did not collect {n} scrapes in {timeout}s")


def test_windows_from_real_prometheus(vllm_and_prometheus):
    fake, base = vllm_and_prometheus
    t_start = time.time()
    _wait_for_samples(base, 9)
    # an outage: the endpoint answers 503, so the target is down and has no samples
    fake.up = False
    time.sleep(6.5)
    fake.up = True
    _wait_for_samples(base, 14)
    end = time.time()
    src = PrometheusClient(base, selector='model_name="llama"')
    w = 3.0
    wins = src.windows("chat", t_start - 30, end, w, GRID)
    assert wins, "no windows"
    # nothing before the server existed: missing, not zero
    assert min(x.start.timestamp() for x in wins) >= t_start - w - 1
    full = [x for x in wins if x.requests > 0]
    assert len(full) >= 3
    # rate: 10 req/s served; increase() extrapolates over the window, so allow 35%
    rates = np.array([x.rate for x in full])
    assert np.median(rates) == pytest.approx(10.0, rel=0.35)
    # size mix: half (100 in, 600 out), half (2000 in, 50 out); the histograms give marginals only
    mix = np.sum([np.asarray(x.counts) for x in full], axis=0)
    mix = mix / mix.sum()
    p_in, p_out = mix.sum(axis=1), mix.sum(axis=0)
    assert p_in == pytest.approx([0.5, 0.0115, 0.4885, 0.0], abs=0.06)
    assert p_out == pytest.approx([0.5, 0.0, 0.5, 0.0], abs=0.06)
    assert mix[0][0] == pytest.approx(0.25, abs=0.06)  # independence: 0.5 x 0.5
    mean_in = sum(x.input_tokens for x in full) / sum(x.requests for x in full)
    assert mean_in == pytest.approx(1050, rel=0.15)
    # the outage left a hole: some window end in the middle of the run has no window at all
    ends = sorted(x.start.timestamp() + w for x in wins)
    gaps = np.diff(ends)
    assert gaps.max() >= 2 * w - 1e-6, f"expected missing windows during the outage, got steps {gaps}"


def test_bad_promql_is_a_clear_error(vllm_and_prometheus):
    _, base = vllm_and_prometheus
    src = PrometheusClient(base, queries=PrometheusQueries(requests="sum(increase(vllm:request_success_total[{w}]"))
    with pytest.raises(SourceError, match="query .* failed: HTTP 400"):
        src.windows("chat", time.time() - 60, time.time(), 5.0, GRID)


def test_unreachable_prometheus_is_a_clear_error():
    src = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    with pytest.raises(SourceError, match="failed"):
        src.windows("chat", 0, 120, 60, GRID)


def test_feed_from_config_polls_finished_windows_and_moves_only_on_commit(vllm_and_prometheus):
    from datetime import datetime, timezone

    from daemon.config import parse_config
    from daemon.wiring import build_source

    _, base = vllm_and_prometheus
    _wait_for_samples(base, 6)
    cfg = parse_config({"loop": {"window_s": 2.0}, "services": [{"name": "chat", "demand": {
        "kind": "prometheus", "prometheus": {"url": base, "selector": 'model_name="llama"', "lateness_s": 1.0}}}]})
    feed = build_source(cfg, cfg.services[0], datetime.now(timezone.utc))
    now = datetime.now(timezone.utc)
    first = feed.poll(now)
    assert first.windows and all(w.start.timestamp() + 2.0 <= now.timestamp() - 1.0 for w in first.windows)
    # Not committed (the tick's transaction failed): the same windows again.
    assert [w.start for w in feed.poll(now).windows] == [w.start for w in first.windows]
    feed.commit(first)
    assert feed.poll(now).windows == ()  # nothing new finished
    time.sleep(4.5)
    later = feed.poll(datetime.now(timezone.utc))
    assert later.windows and later.windows[0].start.timestamp() >= first.windows[-1].start.timestamp() + 2.0
    # A restarted daemon resumes from the stored cursor: no window read twice.
    again = build_source(cfg, cfg.services[0], datetime.now(timezone.utc))
    again.resume(first.cursor)
    assert [w.start for w in again.poll(datetime.now(timezone.utc)).windows][:1] == \
        [later.windows[0].start]
