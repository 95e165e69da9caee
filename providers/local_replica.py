"""A local OpenAI-compatible LLM server with a latency model: a vLLM stand-in without a GPU.

Run it as `python -m providers.local_replica --port 0 --model NAME [--max-model-len N ...]`.
It serves what a gateway and the daemon's feeds talk to on a real vLLM replica:

- `POST /v1/completions` (`prompt`) and `POST /v1/chat/completions` (`messages`), streamed
  as server-sent events (`"stream": true`) or answered as one JSON object; `usage`
  (`prompt_tokens`, `completion_tokens`, `total_tokens`) in the JSON body, and in a last SSE
  chunk (`"choices": []`) when the request asks for it with `stream_options.include_usage`
  or the server runs with `--force-include-usage` (vLLM: `--enable-force-include-usage`);
- `400` when prompt + max_tokens exceed `--max-model-len`, as vLLM answers (not retryable);
- `GET /health` (200 once booted, 503 before), `GET /v1/models`;
- `GET /metrics` in vLLM's Prometheus names: `vllm:request_success_total{finished_reason}`,
  histograms `vllm:request_prompt_tokens`, `vllm:request_generation_tokens`,
  `vllm:time_to_first_token_seconds`, `vllm:e2e_request_latency_seconds`, gauge
  `vllm:num_requests_running` (names and bucket edges as in vllm/engine/metrics.py, v0.6-0.8).

Tokens: a whitespace tokenizer, one token per word of the prompt (chat: of all message
contents), so a test knows exactly how many prompt tokens it sent. The answer has exactly
`max_tokens` tokens (as with vLLM's `ignore_eos`); its words are drawn from a fixed list.

Latency model (`LatencyModel`): time to first token = base + prompt tokens / prefill rate,
stretched by (1 + slowdown x other running requests); then one token every TPOT, stretched
the same way. That is the first-order shape of continuous batching: prefill is linear in the
prompt, and every request in the batch slows the others' iterations.

With `--port 0` the kernel picks a free port; the server writes it to `--port-file` (atomically)
and prints `{"port": N}` on stdout once it listens. `--boot-s` makes /health answer 503 (and
generation 503) for that long, as a replica loading its weights. A stream's headers go out with its
first token (a proxy may retry the request elsewhere until then); `--headers-first` sends them at
once, as vLLM does (its StreamingResponse starts before the prefill). `--request-log FILE` appends
one JSON line per request (arrival, first byte, end, tokens, status) for tests to audit.
SIGTERM stops accepting connections and lets requests in flight finish (up to
`--drain-timeout-s`); SIGKILL is a machine that vanished.

Only the standard library: it starts in a fraction of a second, as many local processes must.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
_WORDS = ("the", "a", "model", "token", "of", "fleet", "and", "to", "in", "gpu", "serves", "answer")

# Histogram edges, after vllm/engine/metrics.py (v0.6-0.8): token histograms on a 1-2-5 grid
# up to max_model_len, TTFT and end-to-end latency on fixed second edges.
TTFT_EDGES = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_EDGES = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


def one_two_five(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `limit` (vLLM's build_1_2_5_buckets)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > limit:
                return tuple(float(x) for x in out)
            out.append(v)
        exp += 1


def count_tokens(text: str) -> int:
    """The replica's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass(frozen=True)
class LatencyModel:
    ttft_base_s: float = 0.015
    prefill_tokens_per_s: float = 50000.0
    tpot_s: float = 0.01
    slowdown_per_request: float = 0.02  # each other running request stretches prefill and decode by this share

    def ttft(self, prompt_tokens: int, others_running: int) -> float:
        stretch = 1.0 + self.slowdown_per_request * max(0, others_running)
        return self.ttft_base_s + prompt_tokens / self.prefill_tokens_per_s * stretch

    def tpot(self, others_running: int) -> float:
        return self.tpot_s * (1.0 + self.slowdown_per_request * max(0, others_running))


class Histogram:
    def __init__(self, edges: tuple[float, ...]):
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        for k, e in enumerate(self.edges):
            if v <= e:
                self.counts[k] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += v
        self.n += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, acc = [], 0
        for e, c in zip(self.edges, self.counts):
            acc += c
            lines.append(f'{name}_bucket{{{labels},le="{e}"}} {acc}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.n}")
        return lines


@dataclass
class Metrics:
    max_model_len: int
    success: dict[str, int] = field(default_factory=dict)  # finished_reason -> count
    running: int = 0
    prompt: Histogram = None  # type: ignore[assignment]
    generation: Histogram = None  # type: ignore[assignment]
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_EDGES))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_EDGES))

    def __post_init__(self) -> None:
        self.prompt = Histogram(one_two_five(self.max_model_len))
        self.generation = Histogram(one_two_five(self.max_model_len))

    def render(self, model: str) -> str:
        lab = f'model_name="{model}"'
        out = ["# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{lab}}} {self.running}",
               "# TYPE vllm:request_success_total counter"]
        for reason in sorted(set(self.success) | {"length", "stop"}):
            out.append(f'vllm:request_success_total{{finished_reason="{reason}",{lab}}} {self.success.get(reason, 0)}')
        for name, h in (("vllm:request_prompt_tokens", self.prompt), ("vllm:request_generation_tokens", self.generation),
                        ("vllm:time_to_first_token_seconds", self.ttft), ("vllm:e2e_request_latency_seconds", self.e2e)):
            out.append(f"# TYPE {name} histogram")
            out.extend(h.render(name, lab))
        return "\n".join(out) + "\n"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class Generation:
    chat: bool
    stream: bool
    include_usage: bool
    prompt_tokens: int
    max_tokens: int
    model: str


class ReplicaServer:
    def __init__(self, model: str, max_model_len: int, latency: LatencyModel, boot_s: float = 0.0,
                 force_include_usage: bool = False, request_log: str | None = None, name: str = "",
                 headers_first: bool = False):
        self.model = model
        self.max_model_len = max_model_len
        self.latency = latency
        self.ready_at = time.monotonic() + boot_s
        self.force_include_usage = force_include_usage
        self.metrics = Metrics(max_model_len)
        self.name = name
        self.headers_first = headers_first
        self._log = open(request_log, "a", buffering=1) if request_log else None
        self._conns: set[asyncio.Task] = set()
        self.inflight = 0
        self.stopping = False

    @property
    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    # -- HTTP/1.1 with keep-alive, just enough for a proxy and a client library ----------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            while not self.stopping:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send_json(writer, 431, {"error": "request headers too large"}, close=True)
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    await self._send_json(writer, 400, {"error": "bad request line"}, close=True)
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._send_json(writer, 411, {"error": "send a Content-Length"}, close=True)
                    return
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    length = -1
                if length < 0 or length > MAX_BODY_BYTES:
                    await self._send_json(writer, 413, {"error": "bad or too large Content-Length"}, close=True)
                    return
                try:
                    body = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                try:
                    keep = await self._route(method, target.split("?", 1)[0], body, writer, close)
                except ConnectionError:
                    return  # the client (or the proxy) went away mid-answer
                if close or not keep:
                    return
        finally:
            self._conns.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _route(self, method: str, path: str, body: bytes, writer, close: bool) -> bool:
        if method == "GET" and path == "/health":
            ok = self.ready and not self.stopping
            await self._send(writer, 200 if ok else 503, b"", "text/plain", close)
            return True
        if method == "GET" and path == "/metrics":
            await self._send(writer, 200, self.metrics.render(self.model).encode(), "text/plain; version=0.0.4", close)
            return True
        if method == "GET" and path == "/v1/models":
            await self._send_json(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model",
                                                                            "max_model_len": self.max_model_len}]}, close)
            return True
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return await self._generate(path.endswith("chat/completions"), body, writer, close)
        await self._send_json(writer, 404, {"error": f"no route {method} {path}"}, close)
        return True

    def _parse(self, chat: bool, body: bytes) -> Generation:
        try:
            req = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(400, f"request body is not JSON: {e}") from None
        if not isinstance(req, dict):
            raise BadRequest(400, "request body must be a JSON object")
        if chat:
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest(400, "'messages' must be a non-empty list")
            prompt_tokens = 0
            for m in msgs:
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, list):  # OpenAI content parts
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise BadRequest(400, "each message needs a string 'content'")
                prompt_tokens += count_tokens(content)
        else:
            prompt = req.get("prompt")
            if not isinstance(prompt, str):
                raise BadRequest(400, "'prompt' must be a string")
            prompt_tokens = count_tokens(prompt)
        max_tokens = req.get("max_tokens", req.get("max_completion_tokens", 16))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(400, "'max_tokens' must be a positive integer")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise BadRequest(400, f"the context of this model is {self.max_model_len} tokens, and this request needs "
                                  f"{prompt_tokens + max_tokens} ({prompt_tokens} prompt + {max_tokens} completion)")
        opts = req.get("stream_options") or {}
        stream = bool(req.get("stream", False))
        include = stream and (self.force_include_usage or bool(opts.get("include_usage")))
        return Generation(chat, stream, include, prompt_tokens, max_tokens, str(req.get("model") or self.model))

    async def _generate(self, chat: bool, body: bytes, writer, close: bool) -> bool:
        arrived = time.time()
        record = {"ts": arrived, "replica": self.name, "bytes": len(body)}
        if not self.ready or self.stopping:
            await self._send_json(writer, 503, _error("the replica is not ready", "ServiceUnavailableError", 503), close)
            self._audit(record, status=503)
            return True
        try:
            g = self._parse(chat, body)
        except BadRequest as e:
            await self._send_json(writer, e.status, _error(str(e), e.kind, e.status), close)
            self._audit(record, status=e.status)
            return True
        record.update(prompt_tokens=g.prompt_tokens, max_tokens=g.max_tokens, stream=g.stream)
        others = self.metrics.running
        self.metrics.running += 1
        self.inflight += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        created = int(arrived)
        t0 = time.monotonic()
        first = None
        sent = 0
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        try:
            if g.stream and self.headers_first:  # as vLLM behind Starlette: headers before the prefill
                writer.write(head)
                await writer.drain()
            await asyncio.sleep(self.latency.ttft(g.prompt_tokens, others))
            if g.stream:
                if not self.headers_first:
                    writer.write(head)
                for k in range(g.max_tokens):
                    if k:
                        await asyncio.sleep(self.latency.tpot(self.metrics.running - 1))
                    word = _WORDS[k % len(_WORDS)]
                    last = k == g.max_tokens - 1
                    _chunk(writer, _sse(_delta(chat, rid, created, g.model, " " + word, "length" if last else None)))
                    await writer.drain()
                    if first is None:
                        first = time.monotonic()
                        record["first_byte"] = time.time()
                    sent += 1
                if g.include_usage:
                    _chunk(writer, _sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                                         "created": created, "model": g.model, "choices": [],
                                         "usage": _usage(g.prompt_tokens, sent)}))
                _chunk(writer, b"data: [DONE]\n\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:
                for k in range(1, g.max_tokens):
                    await asyncio.sleep(self.latency.tpot(self.metrics.running - 1))
                first = time.monotonic()
                record["first_byte"] = time.time()
                sent = g.max_tokens
                text = "".join(" " + _WORDS[k % len(_WORDS)] for k in range(sent))
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "length"}
                await self._send_json(writer, 200, {
                    "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": g.model, "choices": [choice], "usage": _usage(g.prompt_tokens, sent)}, close)
        except (ConnectionError, asyncio.CancelledError):
            self._audit(record, status=499, output_tokens=sent)
            raise
        finally:
            self.metrics.running -= 1
            self.inflight -= 1
        end = time.monotonic()
        m = self.metrics
        m.success["length"] = m.success.get("length", 0) + 1
        m.prompt.observe(g.prompt_tokens)
        m.generation.observe(sent)
        m.ttft.observe((first or end) - t0)
        m.e2e.observe(end - t0)
        self._audit(record, status=200, output_tokens=sent)
        return True

    def _audit(self, record: dict, **extra) -> None:
        if self._log is not None:
            record.update(extra, end=time.time())
            self._log.write(json.dumps(record) + "\n")

    async def _send_json(self, writer, status: int, obj, close: bool = False) -> None:
        await self._send(writer, status, json.dumps(obj).encode(), "application/json", close)

    async def _send(self, writer, status: int, body: bytes, ctype: str, close: bool) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required", 413: "Payload Too Large",
                  431: "Request Header Fields Too Large", 503: "Service Unavailable"}.get(status, "Error")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass


def _error(message: str, kind: str, code: int) -> dict:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _delta(chat: bool, rid: str, created: int, model: str, text: str, finish: str | None) -> dict:
    if chat:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(writer, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    latency = LatencyModel(args.ttft_base_s, args.prefill_tokens_per_s, args.tpot_s, args.slowdown_per_request)
    app = ReplicaServer(args.model, args.max_model_len, latency, args.boot_s, args.force_include_usage,
                        args.request_log, args.name, args.headers_first)
    server = await asyncio.start_server(app.handle, args.host, args.port, limit=MAX_HEADER_BYTES, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        _write_atomic(Path(args.port_file), f"{port}\n")
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        app.stopping = True
        server.close()  # no new connections; requests in flight finish
        deadline = time.monotonic() + args.drain_timeout_s
        while app.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m providers.local_replica", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port, written to --port-file and stdout")
    p.add_argument("--port-file")
    p.add_argument("--model", default="local-model")
    p.add_argument("--name", default="", help="replica name written into the request log")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--ttft-base-s", type=float, default=LatencyModel.ttft_base_s)
    p.add_argument("--prefill-tokens-per-s", type=float, default=LatencyModel.prefill_tokens_per_s)
    p.add_argument("--tpot-s", type=float, default=LatencyModel.tpot_s)
    p.add_argument("--slowdown-per-request", type=float, default=LatencyModel.slowdown_per_request)
    p.add_argument("--boot-s", type=float, default=0.0, help="seconds /health answers 503 (loading weights)")
    p.add_argument("--force-include-usage", action="store_true", help="usage in the last SSE chunk of every stream")
    p.add_argument("--request-log", help="append one JSON line per request")
    p.add_argument("--headers-first", action="store_true",
                   help="send a stream's response headers at once, before the first token (vLLM's behaviour: "
                        "a proxy can then no longer retry the request elsewhere)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_model_len < 1:
        sys.exit("--max-model-len must be positive")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
