"""Measure a live OpenAI-compatible server: sweep request shapes and Poisson rates, stop at the SLO.

Why our own generator and not guidellm (evaluated: guidellm 0.8.1 is on the PyPI
mirror): it pulls torch, transformers and datasets and pins click~=8.4, far too much
for a control daemon's CLI, and its synthetic prompts need a tokenizer download. What
we need is small: open-loop Poisson arrivals (so queueing shows up as it does in
production, unlike closed-loop concurrency sweeps), streaming to time the first token
and the rest, p99s per rate, and a rule to stop raising the rate once the SLO breaks.

Timing per request (same definitions as vLLM's benchmark_serving): TTFT = first
streamed text chunk - send; TPOT = (end - first chunk) / (output tokens - 1), with
output tokens from the server's `usage` when it reports it, else the chunk count.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from daemon.capacity.profile import ACHIEVED_FRACTION, Cell, CurvePoint, Profile, Provenance, Slo, now_utc

# A prompt of N of these words is close to N tokens for Llama/Mistral/Qwen tokenizers
# (each is one common English word with a leading space); the server's usage count is recorded.
_WORDS = ("time people way day man thing woman life child world school state family student group country "
          "problem hand part place case week company system program question work government number night point "
          "home water room mother area money story fact month lot right study book eye job word business issue side "
          "kind head house service friend father power hour game line end member law car city community name").split()


@dataclass(frozen=True)
class MeasureSpec:
    endpoint: str  # base URL, e.g. http://10.0.0.5:8000
    model: str  # served model name sent in requests
    shapes: tuple[tuple[int, int], ...] = ((128, 32), (512, 128), (2048, 256))
    start_rate: float = 0.5
    rate_factor: float = 2.0
    max_rate: float = 256.0
    refine_steps: int = 2  # bisection steps between the last good and the first broken rate
    duration_s: float = 30.0  # Poisson arrivals for this long per rate point...
    min_requests: int = 20  # ...but at least this many requests
    max_requests: int = 2000
    slo: Slo = Slo(ttft_p99_s=2.0, tpot_p99_ms=120.0)
    api: str = "completions"  # or "chat"
    ignore_eos: bool = True  # vLLM extension: generate exactly max_tokens
    request_timeout_s: float = 120.0
    seed: int = 0


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = math.nan
    e2e_s: float = math.nan
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str = ""

    @property
    def tpot_ms(self) -> float | None:
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) * 1e3


@dataclass
class RatePoint:
    shape: tuple[int, int]
    point: CurvePoint
    prompt_tokens_mean: float | None
    results: list[RequestResult] = field(default_factory=list, repr=False)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def make_prompt(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, n_words)))


async def one_request(client, spec: MeasureSpec, prompt: str, max_tokens: int) -> RequestResult:
    if spec.api == "chat":
        url = spec.endpoint.rstrip("/") + "/v1/chat/completions"
        body = {"model": spec.model, "messages": [{"role": "user", "content": prompt}]}
    else:
        url = spec.endpoint.rstrip("/") + "/v1/completions"
        body = {"model": spec.model, "prompt": prompt}
    body.update({"max_tokens": max_tokens, "stream": True, "temperature": 0.0,
                 "stream_options": {"include_usage": True}})
    if spec.ignore_eos:
        body["ignore_eos"] = True
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    try:
        async with client.stream("POST", url, json=body, timeout=spec.request_timeout_s) as resp:
            if resp.status_code != 200:
                text = (await resp.aread())[:200].decode("utf-8", "replace")
                return RequestResult(False, error=f"HTTP {resp.status_code}: {text}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    msg = json.loads(data)
                except json.JSONDecodeError:
                    return RequestResult(False, error=f"bad SSE chunk: {data[:80]!r}")
                if msg.get("usage"):
                    usage = msg["usage"]
                for ch in msg.get("choices") or []:
                    text = ch.get("text")
                    if text is None:
                        text = (ch.get("delta") or {}).get("content")
                    if text:
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    except Exception as e:  # network errors are results to count, not crashes
        return RequestResult(False, error=f"{type(e).__name__}: {e}")
    end = time.perf_counter() - t0
    if ttft is None:
        return RequestResult(False, error="no tokens streamed")
    out = int(usage.get("completion_tokens") or chunks) if usage else chunks
    prompt_tokens = int(usage["prompt_tokens"]) if usage and usage.get("prompt_tokens") is not None else None
    return RequestResult(True, ttft, end, out, prompt_tokens)


async def run_rate(client, spec: MeasureSpec, shape: tuple[int, int], rate: float, rng: random.Random) -> RatePoint:
    """Open-loop Poisson arrivals at `rate` for duration_s (bounded by min/max requests)."""
    n = int(min(spec.max_requests, max(spec.min_requests, math.ceil(rate * spec.duration_s))))
    inp, out = shape
    start = time.perf_counter()
    tasks = []
    t_next = 0.0
    for _ in range(n):
        delay = start + t_next - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_request(client, spec, make_prompt(inp, rng), out)))
        t_next += rng.expovariate(rate)
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    good = [r for r in results if r.ok]
    tpots = [t for t in (r.tpot_ms for r in good) if t is not None]
    prompt_counts = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    point = CurvePoint(
        rate_rps=round(rate, 6),
        achieved_rps=round(len(good) / elapsed, 6) if elapsed > 0 else 0.0,
        ttft_p99_s=round(percentile([r.ttft_s for r in good], 99), 6) if good else None,
        tpot_p99_ms=round(percentile(tpots, 99), 6) if tpots else None,
        ttft_mean_s=round(sum(r.ttft_s for r in good) / len(good), 6) if good else None,
        tpot_mean_ms=round(sum(tpots) / len(tpots), 6) if tpots else None,
        e2e_p99_s=round(percentile([r.e2e_s for r in good], 99), 6) if good else None,
        requests=len(results), errors=len(results) - len(good))
    mean_prompt = sum(prompt_counts) / len(prompt_counts) if prompt_counts else None
    return RatePoint(shape, point, mean_prompt, list(results))


def _meets(p: CurvePoint, slo: Slo) -> bool:
    return p.meets(slo.ttft_p99_s or math.inf, slo.tpot_p99_ms or math.inf)


async def sweep(spec: MeasureSpec, progress: Callable[[dict], None] | None = None, client=None) -> list[RatePoint]:
    """For each shape: raise the rate geometrically until the SLO breaks, then bisect a little."""
    import httpx

    emit = progress or (lambda ev: None)
    rng = random.Random(spec.seed)
    own = client is None
    if own:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        client = httpx.AsyncClient(limits=limits, timeout=spec.request_timeout_s)
    points: list[RatePoint] = []
    try:
        for shape in spec.shapes:
            good, bad = 0.0, None
            rate = spec.start_rate
            while rate <= spec.max_rate:
                emit({"event": "rate.start", "shape": shape, "rate": rate})
                rp = await run_rate(client, spec, shape, rate, rng)
                points.append(rp)
                ok = _meets(rp.point, spec.slo)
                emit({"event": "rate.done", "shape": shape, "rate": rate, "ok": ok, "point": rp.point})
                if not ok:
                    bad = rate
                    break
                good = rate
                rate *= spec.rate_factor
            for _ in range(spec.refine_steps if bad is not None and good > 0 else 0):
                rate = (good + bad) / 2.0
                emit({"event": "rate.start", "shape": shape, "rate": rate})
                rp = await run_rate(client, spec, shape, rate, rng)
                points.append(rp)
                ok = _meets(rp.point, spec.slo)
                emit({"event": "rate.done", "shape": shape, "rate": rate, "ok": ok, "point": rp.point})
                good, bad = (rate, bad) if ok else (good, rate)
            emit({"event": "shape.done", "shape": shape, "max_rps": good})
    finally:
        if own:
            await client.aclose()
    return points


def profile_from_points(points: list[RatePoint], *, spec: MeasureSpec, model: str, gpu: str, tp: int = 1,
                        dtype: str = "bf16") -> Profile:
    """One cell per measured shape (token counts as the server counted them where it said)."""
    by_shape: dict[tuple[int, int], list[RatePoint]] = {}
    for rp in points:
        by_shape.setdefault(rp.shape, []).append(rp)
    cells = []
    for (inp, out), rps in by_shape.items():
        counted = [rp.prompt_tokens_mean for rp in rps if rp.prompt_tokens_mean]
        i_tok = int(round(sum(counted) / len(counted))) if counted else inp
        curve = sorted((rp.point for rp in rps), key=lambda p: p.rate_rps)
        cell = Cell(input_tokens=(i_tok, i_tok), output_tokens=(out, out), max_rps=0.0, curve=curve)
        best = cell.max_rps_at(spec.slo.ttft_p99_s or math.inf, spec.slo.tpot_p99_ms or math.inf) or 0.0
        cells.append(cell.model_copy(update={"max_rps": best}))
    return Profile(
        model=model, gpu=gpu, tp=tp, dtype=dtype, slo=spec.slo, cells=cells,
        provenance=Provenance(kind="measured", source=f"fleetctl profile measure {spec.endpoint}", created=now_utc(),
                              tool="daemon.capacity.measure",
                              notes=f"Poisson open loop, {spec.duration_s:g}s per rate, >= {spec.min_requests} requests, "
                                    f"sustained = achieved >= {ACHIEVED_FRACTION:g} x offered"))
