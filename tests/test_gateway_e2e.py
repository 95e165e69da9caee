"""End to end: real replicas (providers/local_replica.py processes), a real HAProxy (Debian's),
real streaming requests through it, and the gateway sync driven through fleet and routing changes.

The sync is driven by `apply(gateway, desired)`: one function that applies a desired state.
Today it calls `Gateway.sync` directly; when fleetd drives the sync each tick, the driver is
that tick and the checks stay the same.

Scripted run (times after the bytes-per-token fit; FLEET_GATEWAY_E2E_SCALE stretches them):
  warm-up 15 s on the configured guess -> fit bytes per token from HAProxy's own log -> sync
  +10 s  scale up: a3 launched (booting: provisioning, its server answers but must get nothing)
  +25 s  a3 running -> added
  +50 s  routing change (table R2)
  +69 s  six long streams (bucket 2, L4 only) start, so that l2 is streaming when
  +70 s  l2 is SIGKILLed mid-stream (a spot loss); the loop only learns of it 10 s later
  +80 s  l2 gone -> removed; l3 launched; +90 s l3 running
  +100 s scale down: a1 draining, synced until drained, then gone and stopped
  +130 s load stops; then the added latency through the gateway is measured (paired, unloaded)

Checks (each with its bound):
- per routing table and input bucket, each pool's share of the requests HAProxy logged is
  within 4 standard errors of the table's share, sqrt(p(1-p)/n), plus 0.01 for the 1% slots
  (a false alarm per check has probability ~6e-5);
- a booting or draining replica gets no request (its own request log: nothing arrives
  before it was added, nothing after its drain was applied);
- the SIGKILLed replica costs no request that had not started streaming; the ones it was
  streaming are counted and reported;
- HAProxy's log, read by daemon/gateway/logformat.py, has exactly one record per request sent,
  with the prompt and completion tokens that were sent;
- after the fit, no request reaches a pool whose context it exceeds (no 400), and fewer than
  1% land in a lower bucket than their own.
The figures (routing error per bucket, lost requests, added latency p50/p99) are printed and,
with FLEET_GATEWAY_E2E_REPORT=path, written as JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import socket
import string
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from daemon.config import parse_config
from daemon.domain import Route
from daemon.gateway.bytes_per_token import fit_bytes_per_token
from daemon.gateway.layout import Layout
from daemon.gateway.logformat import bytes_token_pairs, read_lines
from daemon.gateway.render import render_haproxy_cfg
from daemon.gateway.runtime import RuntimeApiError, RuntimeClient
from daemon.gateway.state import DesiredState, Replica
from daemon.gateway.sync import Gateway, SyncResult
from providers.replica_processes import ReplicaProcesses

HAPROXY = shutil.which("haproxy")


def _haproxy_skip_reason() -> str | None:
    if HAPROXY is None:
        return "haproxy not installed (CI installs Debian's as root: scripts/deps-haproxy.sh)"
    out = subprocess.run([HAPROXY, "-vv"], capture_output=True, text=True).stdout
    if "Built with Lua" not in out:
        return "this haproxy has no Lua (the gateway's usage filter needs it)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_haproxy_skip_reason() is not None,
                                                    reason=_haproxy_skip_reason() or "")]

SCALE = float(os.environ.get("FLEET_GATEWAY_E2E_SCALE", "1.0"))
RATE = float(os.environ.get("FLEET_GATEWAY_E2E_RPS", "25"))
EDGES = [0, 128, 512, 2048]  # input buckets [0,128) [128,512) [512,...)
WORDS = {0: (8, 120), 1: (140, 500), 2: (560, 1400)}  # prompt words (= tokens) drawn per true bucket
MIX = (0.5, 0.3, 0.2)
LONG_STREAMS = 6  # streams of LONG_TOKENS (about 4 s) running when l2 is killed
LONG_TOKENS = 500
A_CONTEXT = 600  # A10G replicas: a small max_model_len; a bucket-2 prompt there is answered 400
R1 = (Route("chat", 0, "A10Gx1", 0.7), Route("chat", 0, "L4x1", 0.3),
      Route("chat", 1, "A10Gx1", 0.4), Route("chat", 1, "L4x1", 0.6), Route("chat", 2, "L4x1", 1.0))
R2 = (Route("chat", 0, "A10Gx1", 0.3), Route("chat", 0, "L4x1", 0.7),
      Route("chat", 1, "A10Gx1", 0.8), Route("chat", 1, "L4x1", 0.2), Route("chat", 2, "L4x1", 1.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply(gateway: Gateway, desired: DesiredState) -> SyncResult:
    """The driver: apply one desired state to the gateway (fleetd's tick will call the same sync)."""
    res = gateway.sync(desired)
    assert not res.errors, res.errors
    return res


class HAProxy:
    """A HAProxy process started from the rendered files, logging to a file."""

    def __init__(self, cfg, main: Path, log: Path):
        self.cfg, self.main, self.log = cfg, main, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        lay = Layout.at(self.cfg.gateway.state_dir)
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.main), "-f", str(lay.backends_cfg)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        client = RuntimeClient(self.cfg.gateway.socket)
        deadline = time.time() + 15
        while True:
            try:
                client.raw("show info")
                return
            except RuntimeApiError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"haproxy did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@dataclass
class Fleet:
    """What the loop knows of the replicas (pool, lifecycle state, endpoint), and the processes behind them."""

    procs: ReplicaProcesses
    state: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (pool, lifecycle state)

    def launch(self, name: str, pool: str, boot_s: float = 0.0) -> None:
        context = A_CONTEXT if pool.startswith("A10G") else 4096
        self.procs.start(name, "m", ["--max-model-len", str(context), "--boot-s", str(boot_s),
                                     "--request-log", str(self.procs.run_dir / f"{name}.requests.jsonl")])
        self.state[name] = (pool, "provisioning")

    def wait_healthy(self, name: str, timeout_s: float = 30.0) -> None:
        deadline = time.time() + timeout_s
        while not self.procs.healthy(name):
            assert time.time() < deadline, f"{name} never became healthy"
            time.sleep(0.05)

    def set(self, name: str, state: str) -> None:
        self.state[name] = (self.state[name][0], state)

    def desired(self, routes, bpt=None) -> DesiredState:
        reps = tuple(Replica("chat", pool, name, self.procs.endpoint(name), st) for name, (pool, st) in self.state.items())
        return DesiredState(routes, reps, {"chat": bpt} if bpt else {})

    def arrivals(self, name: str) -> list[float]:
        p = self.procs.run_dir / f"{name}.requests.jsonl"
        return [json.loads(x)["ts"] for x in p.read_text().splitlines()] if p.exists() else []


def _config(tmp: Path):
    return parse_config({
        "services": [{"name": "chat", "gpus": ["A10G", "L4"]}],
        "buckets": {"input_edges": EDGES, "output_edges": [0, 64, 4096]},
        "gateway": {"state_dir": str(tmp / "state"), "socket": str(tmp / "admin.sock"),
                    "listen": f"127.0.0.1:{free_port()}", "gpu_counts": [1], "health_interval_s": 0.5,
                    "health_fall": 1, "health_rise": 1, "bytes_per_token_min_samples": 200},
    })


@pytest.fixture
def gateway_env(tmp_path):
    cfg = _config(tmp_path)
    main = tmp_path / "haproxy.cfg"
    main.write_text(render_haproxy_cfg(cfg))
    gw = Gateway(cfg)
    gw.init_state_dir()
    hap = HAProxy(cfg, main, tmp_path / "haproxy.log")
    hap.start()
    fleet = Fleet(ReplicaProcesses(tmp_path / "replicas", ["--force-include-usage", "--ttft-base-s", "0.01",
                                                            "--prefill-tokens-per-s", "20000", "--tpot-s", "0.008"]))
    try:
        yield cfg, gw, hap, fleet
    finally:
        hap.stop()
        fleet.procs.stop_all()


# -- the load generator -------------------------------------------------------------------


@dataclass
class Sent:
    rid: str
    t0: float
    words: int
    max_tokens: int
    bucket: int  # true input bucket, by tokens
    stream: bool
    status: int | None = None
    started: bool = False  # the first token (stream) or the whole answer arrived
    t_first: float | None = None
    t_end: float | None = None
    tokens: int = 0
    usage: dict | None = None
    error: str | None = None


_LETTERS = string.ascii_lowercase


def prompt(rng: random.Random, words: int) -> str:
    """`words` words (the replica's tokens); each request has its own typical word length, so its
    bytes per token differ (prose, identifiers, ...), as real prompts' do."""
    mean = rng.choice((3, 4, 5, 6, 8))
    return " ".join("".join(rng.choice(_LETTERS) for _ in range(max(1, int(rng.gauss(mean, 1.5)))))
                    for _ in range(words))


def new_request(rng: random.Random) -> tuple[Sent, dict]:
    b = rng.choices((0, 1, 2), MIX)[0]
    words = rng.randint(*WORDS[b])
    max_tokens = rng.randint(4, 20)
    stream = rng.random() < 0.85
    body = {"model": "m", "messages": [{"role": "user", "content": prompt(rng, words)}],
            "max_tokens": max_tokens, "stream": stream}
    return Sent(uuid.uuid4().hex, 0.0, words, max_tokens, b, stream), body


async def send(client: httpx.AsyncClient, url: str, s: Sent, body: dict, headers: dict | None = None) -> None:
    s.t0 = time.time()
    h = {"X-Request-Id": s.rid, "X-Fleet-Service": "chat", **(headers or {})}
    try:
        if not s.stream:
            r = await client.post(url, json=body, headers=h)
            s.status = r.status_code
            if r.status_code == 200:
                s.started = True
                s.t_first = time.time()
                s.usage = r.json()["usage"]
                s.tokens = s.usage["completion_tokens"]
            return
        async with client.stream("POST", url, json=body, headers=h) as r:
            s.status = r.status_code
            if r.status_code != 200:
                await r.aread()
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    s.usage = chunk["usage"]
                if chunk.get("choices"):
                    if not s.started:
                        s.started, s.t_first = True, time.time()
                    s.tokens += 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        s.error = f"{type(e).__name__}: {e}"
    finally:
        s.t_end = time.time()


async def run_load(url: str, rate: float, until: float, rng: random.Random, out: list[Sent]) -> None:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
        tasks = []
        t = time.time()
        while t < until:
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - time.time()))
            s, body = new_request(rng)
            out.append(s)
            tasks.append(asyncio.create_task(send(client, url, s, body)))
        await asyncio.gather(*tasks)


def gateway_records(hap: HAProxy, at_least: int = 0, wait_s: float = 30.0):
    """HAProxy's request records; it writes a line once the exchange is over, which may be a moment
    after the client read the last byte: wait up to `wait_s` for `at_least` of them."""
    deadline = time.time() + wait_s
    while True:
        recs = list(read_lines(hap.log.read_text(errors="replace").splitlines(), str(hap.log)))
        if len(recs) >= at_least or time.time() > deadline:
            return recs
        time.sleep(0.1)


def share_errors(records, routes, t_from: float, t_to: float) -> dict:
    """Per bucket: n, and per pool (planned share, observed share, |error|, bound)."""
    planned: dict[int, dict[str, float]] = {}
    for r in routes:
        planned.setdefault(r.input_bucket, {})[r.pool] = r.weight
    out = {}
    for b, pools in sorted(planned.items()):
        got = Counter(r.pool for r in records if t_from <= r.timestamp < t_to and r.bucket == b and r.pool)
        n = sum(got.values())
        rows = {}
        for pool, p in pools.items():
            obs = got.get(pool, 0) / n if n else float("nan")
            bound = 4 * math.sqrt(p * (1 - p) / n) + 0.01 if n else float("nan")
            rows[pool] = {"planned": p, "observed": round(obs, 4), "error": round(abs(obs - p), 4),
                          "bound": round(bound, 4)}
        out[b] = {"n": n, "pools": rows, "other_pools": sum(v for k, v in got.items() if k not in pools)}
    return out


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


async def added_latency(gw_url: str, direct_url: str, pairs: int, rng: random.Random) -> dict:
    """Paired, sequential (unloaded) requests, one straight to a replica and one through the gateway."""
    ttft = {"direct": [], "gateway": []}
    total = {"direct": [], "gateway": []}
    async with httpx.AsyncClient(timeout=30.0) as client:
        for k in range(pairs):
            words = rng.randint(20, 60)
            body = {"model": "m", "messages": [{"role": "user", "content": prompt(rng, words)}],
                    "max_tokens": 8, "stream": True}
            order = ("direct", "gateway") if k % 2 == 0 else ("gateway", "direct")
            for path in order:
                s = Sent(uuid.uuid4().hex, 0.0, words, 8, 0, True)
                await send(client, direct_url if path == "direct" else gw_url, s, body)
                assert s.status == 200 and s.error is None, (path, s)
                ttft[path].append(s.t_first - s.t0)
                total[path].append(s.t_end - s.t0)
    out = {}
    for name, d in (("ttft", ttft), ("total", total)):
        added = [g - x for g, x in zip(d["gateway"], d["direct"])]  # per pair: what the gateway added
        out[name] = {"added_p50_ms": round(1000 * _quantile(added, 0.5), 2),
                     "added_p99_ms": round(1000 * _quantile(added, 0.99), 2)}
        for path in ("direct", "gateway"):
            for q, v in (("p50", 0.5), ("p99", 0.99)):
                out[name][f"{path}_{q}_ms"] = round(1000 * _quantile(d[path], v), 2)
    out["pairs"] = pairs
    return out


# -- the tests ------------------------------------------------------------------------------


def test_gateway_routes_by_plan_through_fleet_changes(gateway_env):
    cfg, gw, hap, fleet = gateway_env
    url = f"http://{cfg.gateway.listen}/v1/chat/completions"
    rng = random.Random(14)
    for name, pool in (("a1", "A10Gx1"), ("a2", "A10Gx1"), ("l1", "L4x1"), ("l2", "L4x1")):
        fleet.launch(name, pool)
    for name in list(fleet.state):
        fleet.wait_healthy(name)
        fleet.set(name, "running")
    res = apply(gw, fleet.desired(R1))
    assert len(res.added) == 4 and res.maps_rewritten  # weights; the bucket map is the configured guess

    sent: list[Sent] = []
    # warm-up on the guessed bytes per token, then fit it from what HAProxy logged
    warm_s = max(15 * SCALE, 1.3 * cfg.gateway.bytes_per_token_min_samples / RATE)
    asyncio.run(run_load(url, RATE, time.time() + warm_s, rng, sent))
    pairs = list(bytes_token_pairs(gateway_records(hap, at_least=len(sent)), "chat"))
    fit = fit_bytes_per_token(pairs, cfg.gateway.bytes_per_token_quantile, cfg.gateway.bytes_per_token_min_samples)
    assert fit is not None and fit.samples == len(pairs)
    res = apply(gw, fleet.desired(R1, fit))
    assert str(Layout.at(cfg.gateway.state_dir).bucket_map("chat")) in res.maps_rewritten
    t_fit = time.time()
    marks: dict[str, float] = {"fit": t_fit}
    syncs: list[SyncResult] = []
    long_sent: list[Sent] = []
    long_tasks: list[asyncio.Task] = []

    async def script() -> None:
        async def at(offset: float) -> None:
            await asyncio.sleep(max(0.0, t_fit + offset * SCALE - time.time()))

        async def sync(routes, tag: str | None = None) -> SyncResult:
            if tag:
                marks[tag] = time.time()
            r = await asyncio.to_thread(apply, gw, fleet.desired(routes, fit))
            syncs.append(r)
            return r

        async def busy(name: str, at_least: int, timeout_s: float = 15.0) -> int:
            """Wait until the replica has `at_least` requests running (its vLLM-style gauge)."""
            deadline = time.time() + timeout_s
            async with httpx.AsyncClient(timeout=2.0) as c:
                while True:
                    text = (await c.get(fleet.procs.endpoint(name) + "/metrics")).text
                    running = int(float(next(ln.split()[-1] for ln in text.splitlines()
                                             if ln.startswith("vllm:num_requests_running"))))
                    if running >= at_least or time.time() > deadline:
                        return running
                    await asyncio.sleep(0.01)

        await at(10)
        fleet.launch("a3", "A10Gx1", boot_s=3.0)
        r = await sync(R1)
        assert r.commands == ()  # a booting replica is not added
        await at(25)
        await asyncio.to_thread(fleet.wait_healthy, "a3")
        fleet.set("a3", "running")
        r = await sync(R1, "a3_added")
        assert r.added == ("chat__A10Gx1/a3",)
        await at(50)
        r = await sync(R2, "r2")
        assert r.maps_rewritten == (str(Layout.at(cfg.gateway.state_dir).weight_map("chat")),)
        # Long streams (bucket 2: only the L4 pool serves it) so the kill is sure to cut some:
        # the load's own streams last 30-200 ms, which a loaded machine can outlast between
        # reading l2's gauge and the kill.
        await at(69)
        long_rng = random.Random(15)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as long_client:
            for _ in range(LONG_STREAMS):
                words = long_rng.randint(1000, WORDS[2][1])  # well inside bucket 2, whatever its bytes per token
                s = Sent(uuid.uuid4().hex, 0.0, words, LONG_TOKENS, 2, True)
                body = {"model": "m", "messages": [{"role": "user", "content": prompt(long_rng, words)}],
                        "max_tokens": LONG_TOKENS, "stream": True}
                sent.append(s)
                long_sent.append(s)
                long_tasks.append(asyncio.create_task(send(long_client, url, s, body)))
            await at(70)
            marks["l2_running_at_kill"] = await busy("l2", 2)  # a spot loss at the worst moment: mid-stream
            marks["kill"] = time.time()
            fleet.procs.kill("l2")
            await asyncio.gather(*long_tasks)
        await at(80)
        fleet.set("l2", "preempted")
        fleet.launch("l3", "L4x1", boot_s=2.0)
        r = await sync(R2)
        assert "chat__L4x1/l2" in r.removed or "chat__L4x1/l2" in r.pending_removal
        await at(90)
        await asyncio.to_thread(fleet.wait_healthy, "l3")
        fleet.set("l3", "running")
        r = await sync(R2, "l3_added")
        assert r.added == ("chat__L4x1/l3",)
        await at(100)
        marks["a1_running_at_drain"] = await busy("a1", 1)  # so the drain has streams to wait for
        marks["drain_asked"] = time.time()
        fleet.set("a1", "draining")
        r = await sync(R2, "drain")
        marks["drain_applied"] = time.time()
        assert r.drained_now == ("chat__A10Gx1/a1",)
        busy_seen = dict(r.drain_busy)
        deadline = time.time() + 60
        while "a1" not in r.drained:
            assert time.time() < deadline, "a1 never drained"
            await asyncio.sleep(0.5)
            r = await sync(R2)
            busy_seen.update(r.drain_busy)
        marks["drained"] = time.time()
        marks["drain_busy_max"] = max(busy_seen.values(), default=0)
        fleet.set("a1", "terminated")
        r = await sync(R2)
        assert r.removed == ("chat__A10Gx1/a1",)
        fleet.procs.stop("a1")

    async def main() -> None:
        await asyncio.gather(run_load(url, RATE, t_fit + 130 * SCALE, rng, sent), script())

    asyncio.run(main())
    t_end = time.time()
    records = gateway_records(hap, at_least=len(sent))
    by_id = {}
    for r in records:
        assert r.request_id not in by_id, f"request {r.request_id} logged twice"
        by_id[r.request_id] = r
    report: dict = {"requests": len(sent), "rate_rps": RATE, "scale": SCALE,
                    "bytes_per_token": {"overhead": round(fit.overhead_bytes, 1), "low": round(fit.low, 3),
                                        "median": round(fit.median, 3), "samples": fit.samples}}

    # 1. the demand feed's counts equal what was sent: one record per request, with its tokens
    missing = [s for s in sent if s.rid not in by_id]
    assert not missing, [(s.rid, s.status, s.error, s.t0) for s in missing[:5]]
    assert len(by_id) == len(sent)
    mismatched = [s.rid for s in sent if s.status == 200 and s.error is None
                  and (by_id[s.rid].input_tokens, by_id[s.rid].output_tokens) != (s.words, s.max_tokens)]
    assert not mismatched, mismatched[:5]
    for s in sent:
        if s.usage:
            assert (s.usage["prompt_tokens"], s.usage["completion_tokens"]) == (s.words, s.max_tokens)

    # 2. routing shares per bucket and pool, within the stated bound
    m = 1.0  # seconds around a routing change excluded (a request is routed when its headers arrive)
    phases = {"R1": share_errors(records, R1, marks["fit"] + m, marks["r2"] - m),
              "R2": share_errors(records, R2, marks["r2"] + m, t_end)}
    report["routing"] = phases
    for name, phase in phases.items():
        for b, row in phase.items():
            assert row["n"] >= 100, (name, b, row)
            assert row["other_pools"] == 0, (name, b, row)
            for pool, e in row["pools"].items():
                assert e["error"] <= e["bound"], (name, b, pool, e)

    # 3. booting and draining replicas get nothing
    for name, added in (("a3", marks["a3_added"]), ("l3", marks["l3_added"])):
        early = [t for t in fleet.arrivals(name) if t < added]
        assert not early, f"{name} got {len(early)} request(s) while booting"
        assert len(fleet.arrivals(name)) > 0
    late = [t for t in fleet.arrivals("a1") if t > marks["drain_applied"] + 0.05]
    assert not late, f"a1 got {len(late)} request(s) after its drain"
    report["drain"] = {"requests_running_at_drain": marks["a1_running_at_drain"],
                       "connections_reported_busy": marks["drain_busy_max"],
                       "seconds_to_drain": round(marks["drained"] - marks["drain_applied"], 2)}
    assert marks["a1_running_at_drain"] >= 1 and marks["drain_busy_max"] >= 1
    # Streams a1 was serving when the drain was asked end whole, whether they end before HAProxy
    # applied it or after (on a loaded machine applying it can outlast short streams).
    in_flight_at_drain = [s for s in sent if by_id[s.rid].server == "a1" and s.t0 < marks["drain_asked"]
                          and s.t_end > marks["drain_asked"]]
    assert in_flight_at_drain and all(s.status == 200 and s.error is None for s in in_flight_at_drain)

    # 4. the SIGKILLed replica: only requests it was already streaming are lost
    failed = [s for s in sent if s.status != 200 or s.error is not None or s.tokens != s.max_tokens]
    not_started = [s for s in failed if not s.started]
    assert not not_started, [(s.status, s.error) for s in not_started[:5]]
    on_l2 = [s for s in failed if by_id[s.rid].server == "l2"]
    assert len(on_l2) == len(failed), "a request failed on a replica that was not killed"
    retried = [r for r in records if r.retries > 0 and r.timestamp >= marks["kill"]]
    report["kill"] = {"requests_running_at_kill": marks["l2_running_at_kill"],
                      "lost_mid_stream": len(failed), "lost_before_streaming": len(not_started),
                      "retried_elsewhere": sum(1 for r in retried if r.status == 200 and r.redispatched)}
    # The kill hit a busy replica, and it showed: the long streams it was serving were cut after
    # they had started, and the ones on its peer ended whole.
    long_on_l2 = [s for s in long_sent if by_id[s.rid].server == "l2"]
    report["kill"]["long_streams_on_l2"] = len(long_on_l2)
    assert marks["l2_running_at_kill"] >= 2 and long_on_l2, [(by_id[s.rid].server, s.status) for s in long_sent]
    assert all(s in failed and s.started for s in long_on_l2), [(s.status, s.error, s.tokens) for s in long_on_l2]
    assert all(s.status == 200 and s.error is None and s.tokens == LONG_TOKENS
               for s in long_sent if by_id[s.rid].server != "l2")

    # 5. conservative buckets after the fit: nothing past a pool's context, few below their own bucket
    after = [s for s in sent if s.t0 > marks["fit"] + m]
    assert not [s for s in after if s.status == 400]
    lower = sum(1 for s in after if by_id[s.rid].bucket is not None and by_id[s.rid].bucket < s.bucket)
    higher = sum(1 for s in after if by_id[s.rid].bucket is not None and by_id[s.rid].bucket > s.bucket)
    report["bucketing"] = {"requests": len(after), "lower_than_own": lower, "higher_than_own": higher}
    assert lower / len(after) < 0.01

    # 6. added latency through the gateway, unloaded and paired
    direct = f"{fleet.procs.endpoint('l1')}/v1/chat/completions"
    report["added_latency"] = asyncio.run(added_latency(url, direct, int(300 * max(SCALE, 0.34)), rng))
    print("\ngateway e2e:", json.dumps(report, indent=1))
    if os.environ.get("FLEET_GATEWAY_E2E_REPORT"):
        Path(os.environ["FLEET_GATEWAY_E2E_REPORT"]).write_text(json.dumps(report, indent=1))


def test_restarted_haproxy_routes_as_before(gateway_env):
    cfg, gw, hap, fleet = gateway_env
    for name, pool in (("a1", "A10Gx1"), ("l1", "L4x1"), ("l2", "L4x1")):
        fleet.launch(name, pool)
        fleet.wait_healthy(name)
        fleet.set(name, "running")
    fit = fit_bytes_per_token([(150 + 6 * t, t) for t in range(20, 2000, 5)], 0.02, 200)
    apply(gw, fleet.desired(R2, fit))
    fleet.set("l2", "draining")
    apply(gw, fleet.desired(R2, fit))
    client = RuntimeClient(cfg.gateway.socket)
    before = client.observe(gw.map_paths())

    hap.stop()
    hap.start()  # a new HAProxy process from the same files
    after = client.observe(gw.map_paths())
    assert after.maps == before.maps
    assert {k: (s.address, s.admin != "ready") for k, s in after.servers.items()} == \
        {k: (s.address, s.admin != "ready") for k, s in before.servers.items()}
    res = apply(gw, fleet.desired(R2, fit))
    assert res.commands == () and res.drained == ("l2",)  # already in step; the draining one has no connection
    url = f"http://{cfg.gateway.listen}/v1/completions"
    for k in range(20):
        r = httpx.post(url, json={"prompt": "w " * 200, "max_tokens": 2}, headers={"X-Fleet-Service": "chat"})
        assert r.status_code == 200
    servers = Counter(r.server for r in gateway_records(hap, at_least=20))
    assert servers["l2"] == 0 and servers["a1"] + servers["l1"] == 20
    # unknown service: 404 from the gateway itself, logged
    assert httpx.post(url, json={}, headers={"X-Fleet-Service": "nope"}).status_code == 404
    assert gateway_records(hap, at_least=21)[-1].status == 404


def test_fleetctl_gateway_status_reads_the_running_haproxy(gateway_env):
    from typer.testing import CliRunner

    from daemon.cli.fleetctl import app

    cfg, gw, hap, fleet = gateway_env
    fleet.launch("a1", "A10Gx1")
    fleet.wait_healthy("a1")
    fleet.set("a1", "running")
    apply(gw, fleet.desired((Route("chat", 0, "A10Gx1", 1.0),)))
    toml = Path(cfg.gateway.state_dir).parent / "fleet.toml"
    toml.write_text(
        '[buckets]\ninput_edges = [0, 128, 512, 2048]\noutput_edges = [0, 64, 4096]\n'
        '[[services]]\nname = "chat"\ngpus = ["A10G", "L4"]\n'
        f'[gateway]\nstate_dir = "{cfg.gateway.state_dir}"\nsocket = "{cfg.gateway.socket}"\n'
        f'listen = "{cfg.gateway.listen}"\ngpu_counts = [1]\n')
    out = CliRunner().invoke(app, ["gateway", "status", "-c", str(toml), "--json"])
    assert out.exit_code == 0, out.output
    st = json.loads(out.output)["services"]["chat"]
    assert st["routes"] == {"0": {"A10Gx1": 1.0}, "1": {"A10Gx1": 1.0}, "2": {"A10Gx1": 1.0}}
    assert st["pools"]["A10Gx1"][0]["server"] == "a1" and st["pools"]["A10Gx1"][0]["admin"] == "ready"
    text = CliRunner().invoke(app, ["gateway", "status", "-c", str(toml)]).output
    assert "bucket 0" in text and "a1" in text
