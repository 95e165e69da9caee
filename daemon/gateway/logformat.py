"""The gateway's per-request log: one JSON object per line -> one typed record. Pure.

HAProxy writes the line (render.LOG_FORMAT) when a request ends, streamed or not:

    {"v":1,"ts":1796116451.228,"request_id":"c0ffee","service":"chat","bucket":1,"backend":"chat__A10Gx1",
     "server":"fleet-12","status":200,"req_bytes":2113,"resp_bytes":5230,"in_tokens":512,
     "out_tokens":128,"tw":0,"tc":0,"tr":17,"ta":1052,"retries":"0","term":"--"}

`ts` is when HAProxy accepted the request (epoch seconds, ms resolution), so lines come out
ordered by end, not by `ts`: a reader that windows by `ts` must allow for the longest request.
Token counts are vLLM's own (`usage`, copied by usage.lua); null where the answer carried
none (an error, a stream cut short, a server started without usage in streams).

The same stream carries HAProxy's own messages ("Server chat__A10Gx1/r1 is DOWN ..."), and
a syslog relay may prefix each line: `parse_line` skips to the first `{`, returns None for a
line that is not a request record, and raises `GatewayLogError` naming the line for one that
looks like a record and is not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

from daemon.gateway.layout import split_backend

SUPPORTED_VERSIONS = (1,)


class GatewayLogError(ValueError):
    """A malformed request record; the message names the source, the line and the field."""


@dataclass(frozen=True)
class GatewayRequest:
    timestamp: float  # accepted at, epoch seconds (UTC)
    request_id: str | None  # the client's X-Request-Id header
    service: str | None  # as the request named it (an unknown one is answered 404); None: it named none
    bucket: int | None  # input bucket the gateway put it in (by size)
    pool: str | None  # e.g. "A10Gx1"; None: no pool took it (404, no route)
    server: str | None  # replica (HAProxy server name); None: none was reached
    backend: str
    status: int  # HTTP status sent to the client (-1: none, the client went away first)
    request_bytes: int | None
    response_bytes: int
    input_tokens: int | None
    output_tokens: int | None
    queue_ms: int | None  # time waiting for a connection slot
    connect_ms: int | None
    response_ms: int | None  # until the replica's response headers (not the first token)
    total_ms: int | None
    retries: int
    redispatched: bool  # a retry went to another replica of the pool
    termination: str  # HAProxy's termination state, "--" for a normal end
    line: int | None = None

    @property
    def completed(self) -> bool:
        """Answered in full by a replica (a 2xx, ended normally)."""
        return 200 <= self.status < 300 and self.termination == "--" and self.server is not None


def _field(obj: dict, name: str, where: str, kind, nullable: bool = False):
    if name not in obj:
        raise GatewayLogError(f"{where}: missing field {name!r}")
    v = obj[name]
    if v is None:
        if nullable:
            return None
        raise GatewayLogError(f"{where}: field {name!r} is null")
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise GatewayLogError(f"{where}: field {name!r} must be an integer, got {v!r}")
        return int(v)
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise GatewayLogError(f"{where}: field {name!r} must be a number, got {v!r}")
        return float(v)
    if not isinstance(v, str):
        raise GatewayLogError(f"{where}: field {name!r} must be a string, got {v!r}")
    return v


def _ms(obj: dict, name: str, where: str) -> int | None:
    v = _field(obj, name, where, int)
    return None if v < 0 else v


def parse_line(text: str, line: int | None = None, source: str = "gateway log") -> GatewayRequest | None:
    """One log line -> its request record; None if it is not one (HAProxy's own messages, blanks)."""
    where = f"{source}: line {line}" if line is not None else source
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:].strip()
    if not body.startswith('{"v":'):
        return None  # not written by our log-format (e.g. JSON in some other message)
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise GatewayLogError(f"{where}: not valid JSON ({e.msg} at column {start + e.pos + 1}): {body[:120]!r}") from None
    if not isinstance(obj, dict):
        raise GatewayLogError(f"{where}: not a JSON object")
    version = _field(obj, "v", where, int)
    if version not in SUPPORTED_VERSIONS:
        raise GatewayLogError(f"{where}: log format version {version} (this reader knows {SUPPORTED_VERSIONS})")
    backend = _field(obj, "backend", where, str)
    server = _field(obj, "server", where, str)
    service = _field(obj, "service", where, str)
    rid = _field(obj, "request_id", where, str)
    split = split_backend(backend)
    bucket = _field(obj, "bucket", where, int, nullable=True)
    if bucket is not None and bucket < 0:
        raise GatewayLogError(f"{where}: field 'bucket' must be >= 0, got {bucket}")
    tokens = {}
    for name in ("in_tokens", "out_tokens", "req_bytes"):
        v = _field(obj, name, where, int, nullable=True)
        if v is not None and v < 0:
            raise GatewayLogError(f"{where}: field {name!r} must be >= 0, got {v}")
        tokens[name] = v
    rc = _field(obj, "retries", where, str)
    redispatched = rc.startswith("+")
    try:
        retries = int(rc.lstrip("+"))
    except ValueError:
        raise GatewayLogError(f"{where}: field 'retries' must be a count (e.g. \"1\" or \"+1\"), got {rc!r}") from None
    return GatewayRequest(
        timestamp=_field(obj, "ts", where, float),
        request_id=None if rid in ("", "-") else rid,
        service=None if service in ("", "-") else service,
        bucket=bucket,
        pool=split[1] if split else None,
        server=None if server in ("", "-", "<NOSRV>") else server,
        backend=backend,
        status=_field(obj, "status", where, int),
        request_bytes=tokens["req_bytes"],
        response_bytes=_field(obj, "resp_bytes", where, int),
        input_tokens=tokens["in_tokens"],
        output_tokens=tokens["out_tokens"],
        queue_ms=_ms(obj, "tw", where),
        connect_ms=_ms(obj, "tc", where),
        response_ms=_ms(obj, "tr", where),
        total_ms=_ms(obj, "ta", where),
        retries=retries,
        redispatched=redispatched,
        termination=_field(obj, "term", where, str),
        line=line,
    )


def read_lines(lines: Iterable[str], source: str = "gateway log", first_line: int = 1,
               on_bad: Literal["raise", "skip"] = "raise",
               errors: list[GatewayLogError] | None = None) -> Iterator[GatewayRequest]:
    """Records of an iterable of lines; bad ones raise, or are collected in `errors` and skipped."""
    for n, text in enumerate(lines, start=first_line):
        try:
            rec = parse_line(text, n, source)
        except GatewayLogError as e:
            if on_bad == "raise":
                raise
            if errors is not None:
                errors.append(e)
            continue
        if rec is not None:
            yield rec


def bytes_token_pairs(records: Iterable[GatewayRequest], service: str) -> Iterator[tuple[int, int]]:
    """(request bytes, prompt tokens) of a service's completed requests: the input of the bytes-per-token fit."""
    for r in records:
        if r.service == service and r.completed and r.request_bytes and r.input_tokens:
            yield r.request_bytes, r.input_tokens
