"""Request logs: one parser per format, shared by replay (`read_trace`) and live tailing (`RequestLogSource`).

One row per request: arrival time, input tokens, output tokens. Formats:

- `azure`: the Azure LLM inference trace 2023 (Splitwise) CSV: `TIMESTAMP`
  (`YYYY-MM-DD HH:MM:SS.fffffff`, no zone given: read as UTC), `ContextTokens`,
  `GeneratedTokens`.
- `jsonl`: one JSON object per line with `timestamp` (epoch milliseconds, or an
  ISO 8601 string), `input_length`, `output_length`; other key names through
  `columns` ({"timestamp": KEY, "input_tokens": KEY, "output_tokens": KEY}).
- `csv`: a CSV with a header; columns `timestamp` (epoch seconds or ISO 8601),
  `input_tokens`, `output_tokens`, or other names through `columns`.

`auto` picks by the first line. `.xz`, `.gz` and `.bz2` files are read whole
(replay); plain files can also be tailed by byte offset.

A malformed row is a `BadRow` naming file, line and field: skipped and counted
(`on_bad_row = "skip"`) or the end of the read (`"reject"`). Numbers are checked
for range (a token count of 1e23 or a timestamp in the year 3000 is a bad row,
not a crash), and ISO timestamps keep their UTC offsets.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import math
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from daemon.demand.errors import DemandInputError

FORMATS = ("azure", "jsonl", "csv", "haproxy")
FIELDS = ("timestamp", "input_tokens", "output_tokens")
AZURE_COLUMNS = {"timestamp": "TIMESTAMP", "input_tokens": "ContextTokens", "output_tokens": "GeneratedTokens"}
JSONL_KEYS = {"timestamp": "timestamp", "input_tokens": "input_length", "output_tokens": "output_length"}
CSV_COLUMNS = {"timestamp": "timestamp", "input_tokens": "input_tokens", "output_tokens": "output_tokens"}

# Sanity bounds: beyond them a value is a typo or corruption, not a request. The largest
# context windows offered today are a few million tokens; 1e8 leaves room for any of them.
MAX_TOKENS = 100_000_000
MIN_EPOCH_S = 0.0  # 1970
MAX_EPOCH_S = 7_258_118_400.0  # 2200-01-01: a far-future timestamp is a clock or unit error
# A request-log line is a few hundred bytes; a longer one is corruption (or a binary file),
# reported as a bad row without being parsed (csv refuses fields over 128 KiB anyway).
MAX_LINE_BYTES = 1 << 20
# A trace is read whole for replay: past this many (decompressed) bytes, about 30 M requests,
# it would not fit in memory as rows; split it.
MAX_TRACE_BYTES = 1 << 30
# A replayed trace spans at most this long: one timestamp in a wrong unit among the rest
# (ms read as s) would otherwise make a replay of millions of empty ticks.
MAX_TRACE_SPAN_S = 400 * 86400.0
KEEP_BAD_ROWS = 1000  # bad rows kept with their messages per read; the rest are counted

_COMPRESSED = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


@dataclass(frozen=True)
class RequestRow:
    timestamp: float  # epoch seconds, UTC
    input_tokens: int
    output_tokens: int
    line: int  # 1-based line number in the file
    offset: int = 0  # byte offset of the line's start (decompressed bytes for compressed files)
    # Request bytes of a request the gateway answered in full with vLLM's token counts: with
    # input_tokens, one (bytes, prompt tokens) pair for the gateway's bytes-per-token fit.
    request_bytes: int | None = None


@dataclass(frozen=True)
class BadRow:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: field {self.field!r}: {self.message}"


class RowError(ValueError):
    def __init__(self, fieldname: str, message: str):
        super().__init__(message)
        self.field = fieldname


def is_compressed(path: Path) -> bool:
    return path.suffix.lower() in _COMPRESSED


def parse_time(text: str) -> float:
    """Epoch seconds from a number, ISO 8601, or Azure's 7-digit fractions; naive times are UTC.

    The fraction is split off by hand (Python takes at most 6 digits, Azure writes 7)
    and the UTC offset after it is kept: `...48.5+05:00` is 13:15:48.5 UTC.
    """
    try:
        return _parse_time(text)
    except OverflowError:
        raise ValueError(f"time out of range: {text[:80]!r}") from None


def _parse_time(text: str) -> float:
    s = text.strip()
    try:
        v = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(v):
            raise ValueError(f"not a finite time: {text!r}")
        return v
    frac = 0.0
    head, dot, rest = s.partition(".")
    if dot:
        digits = ""
        for ch in rest:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            raise ValueError(f"not a time: {text!r}")
        frac = float("0." + digits)
        s = head + rest[len(digits):]
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s.replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"not a time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp() + frac


def _epoch(value, unit: float) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"a {type(value).__name__} is not a time")
    try:
        if isinstance(value, (int, float)):
            t = float(value) * unit
        else:
            text = str(value)
            try:
                t = float(text.strip()) * unit
            except ValueError:
                t = parse_time(text)
    except OverflowError:
        raise ValueError(f"time {str(value)[:40]!r} is outside 1970..2200 (wrong unit?)") from None
    if not math.isfinite(t) or not MIN_EPOCH_S <= t < MAX_EPOCH_S:
        raise ValueError(f"time {value!r} is outside 1970..2200 (wrong unit?)")
    return t


def _tokens(value) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a token count")
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"a {type(value).__name__} is not a token count")
    try:
        v = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except OverflowError:
        raise ValueError(f"{str(value)[:40]}... tokens is beyond {MAX_TOKENS:,} (not a real request)") from None
    except ValueError:
        raise ValueError(f"not a number: {str(value)[:80]!r}") from None
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise ValueError(f"must be a non-negative integer, got {value!r}")
    if v > MAX_TOKENS:
        raise ValueError(f"{value!r} tokens is beyond {MAX_TOKENS:,} (not a real request)")
    return int(v)


# -- formats: a parser per format, built from the file's first line -----------------------

LineParser = Callable[[str], tuple[float, int, int]]  # raises RowError


def detect_format(path: Path, head: bytes) -> str:
    if b"\x00" in head:
        raise DemandInputError(f"{path}:1: cannot tell the request-log format: the first line holds NUL bytes (a "
                               "binary file, not Azure CSV, JSONL or CSV text)")
    text = head.lstrip()
    if text.startswith(b"{"):
        # The gateway's own records (daemon/gateway/logformat.py) are JSON too: known by their keys.
        return "haproxy" if b'"backend"' in text and b'"req_bytes"' in text else "jsonl"
    cols = {c.strip().strip('"') for c in head.decode("utf-8", "replace").strip().split(",")}
    if set(AZURE_COLUMNS.values()) <= cols:
        return "azure"
    if set(CSV_COLUMNS.values()) <= cols:
        return "csv"
    raise DemandInputError(
        f"{path}:1: cannot tell the request-log format from the first line {head[:80]!r}; expected an Azure "
        "header (TIMESTAMP,ContextTokens,GeneratedTokens), a CSV header (timestamp,input_tokens,output_tokens) "
        "or a JSON object per line (timestamp, input_length, output_length); or set format and columns"
    )


# A gateway log's request without token counts (an error, a stream cut short) is still demand;
# its prompt size is estimated from its bytes at this many bytes per token (English text with
# JSON around it: the gateway's own default guess, config gateway.bytes_per_token).
GATEWAY_BYTES_PER_TOKEN = 3.0


def make_parser(path: Path, fmt: str, header: str, columns: dict[str, str] | None = None,
                timestamp_unit: float | None = None, service: str | None = None) -> tuple[LineParser, bool]:
    """(parser of one line, whether the first line is a header to skip).

    A parser returns (timestamp, input tokens, output tokens[, request bytes]) or None for a
    line that is no request of `service` (the gateway's log holds every service's requests
    and HAProxy's own messages)."""
    if fmt == "haproxy":
        from daemon.gateway.logformat import GatewayLogError, parse_line

        def parse_gateway(line: str):
            try:
                rec = parse_line(line, None, str(path))
            except GatewayLogError as e:
                raise RowError("<record>", str(e)) from None
            if rec is None or (service is not None and rec.service != service):
                return None
            t = _epoch(rec.timestamp, 1.0)
            inp = rec.input_tokens
            if inp is None:
                inp = int(round((rec.request_bytes or 0) / GATEWAY_BYTES_PER_TOKEN))
            pair = rec.request_bytes if (rec.completed and rec.request_bytes and rec.input_tokens) else None
            return t, _tokens(inp), _tokens(rec.output_tokens or 0), pair

        return parse_gateway, False
    if fmt == "jsonl":
        keys = {**JSONL_KEYS, **(columns or {})}
        unit = 1e-3 if timestamp_unit is None else timestamp_unit

        def parse_json(line: str) -> tuple[float, int, int]:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: [[[[... nested past the stack
                raise RowError("<line>", f"not JSON: {str(e)[:200]}") from None
            if not isinstance(obj, dict):
                raise RowError("<line>", "not a JSON object")
            vals = []
            for name in FIELDS:
                key = keys[name]
                if key not in obj:
                    raise RowError(key, "missing")
                try:
                    vals.append(_epoch(obj[key], unit) if name == "timestamp" else _tokens(obj[key]))
                except (ValueError, TypeError, OverflowError) as e:
                    raise RowError(key, str(e)) from None
            return vals[0], vals[1], vals[2]

        return parse_json, False
    if fmt not in ("azure", "csv"):
        raise DemandInputError(f"{path}: unknown request-log format {fmt!r} (allowed: auto, {', '.join(FORMATS)})")
    cols = AZURE_COLUMNS if fmt == "azure" else {**CSV_COLUMNS, **(columns or {})}
    try:
        names = next(csv.reader([header]), [])
    except csv.Error as e:
        raise DemandInputError(f"{path}:1: the header is not CSV: {e}") from None
    names = [n.strip() for n in names]
    missing = [f"{c!r} ({k})" for k, c in cols.items() if c not in names]
    if missing:
        raise DemandInputError(f"{path}:1: header has no column {', '.join(missing)} for format {fmt} "
                               f"(header: {names})")
    index = [names.index(cols[name]) for name in FIELDS]
    width = len(names)
    unit = 1.0 if timestamp_unit is None else timestamp_unit

    def parse_csv(line: str) -> tuple[float, int, int]:
        try:
            rec = next(csv.reader([line]), [])
        except csv.Error as e:
            raise RowError("<line>", f"not CSV: {e}") from None
        if len(rec) < width:
            raise RowError("<line>", f"{len(rec)} fields, the header has {width}")
        out = []
        for name, k in zip(FIELDS, index):
            try:
                out.append(_epoch(rec[k], unit) if name == "timestamp" else _tokens(rec[k]))
            except ValueError as e:
                raise RowError(cols[name], str(e)) from None
        return out[0], out[1], out[2]

    return parse_csv, True


# -- reading ------------------------------------------------------------------------------

@dataclass
class Scan:
    """What one read of a log returned: rows, bad rows, and where the next read starts."""

    rows: list[RequestRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)  # the first KEEP_BAD_ROWS, with their messages
    end_offset: int = 0  # first byte not consumed (the start of a half-written last line)
    end_line: int = 0  # lines consumed before end_offset
    exhausted: bool = True  # False: stopped at max_bytes, more complete lines follow
    bad_count: int = 0  # every bad row, kept or not


# What a corrupt or truncated file raises while read: gzip/bz2 give OSError or EOFError, xz LZMAError.
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


def _open_binary(path: Path):
    opener = _COMPRESSED.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")


def _read_error(path: Path, e: BaseException) -> DemandInputError:
    what = getattr(e, "strerror", None) or str(e) or type(e).__name__
    if isinstance(e, EOFError) or (is_compressed(path) and not isinstance(e, (FileNotFoundError, PermissionError,
                                                                              IsADirectoryError))):
        what = f"not a valid or complete {path.suffix} file ({what})"
    return DemandInputError(f"{path}: cannot read: {what}")


def first_line(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.readline(1 << 16)
    except _READ_ERRORS as e:
        raise _read_error(path, e) from None


def scan(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None, start_offset: int = 0,
         start_line: int = 0, *, complete: bool | None = None, on_bad_row: Literal["skip", "reject"] = "skip",
         max_bytes: int | None = None, timestamp_unit: float | None = None,
         max_bad_rows: int | None = None, service: str | None = None) -> Scan:
    """Rows from byte `start_offset` to the last complete line (all of it when `complete`).

    `start_line` is the number of lines before `start_offset` (for line numbers in
    errors; 0 at the start). `complete`: the file is finished, so a last line
    without a newline is a row too (default: yes for compressed files, no for
    plain ones, which may be growing). `max_bytes` bounds one read; `exhausted`
    says whether it got to the end (a bounded read of a finished file then ends at
    its last whole line). Without `max_bytes` at most MAX_TRACE_BYTES are read.
    `max_bad_rows`: more bad rows than this end the read with an error (a file of
    garbage is not scanned to its end).
    """
    p = Path(path)
    if complete is None:
        complete = is_compressed(p)
    head = first_line(p)
    if fmt == "auto":
        if not head.strip():
            return Scan(end_offset=start_offset, end_line=start_line)  # empty so far
        fmt = detect_format(p, head)
    if fmt != "jsonl" and not head.endswith(b"\n") and not complete:
        if len(head) >= 1 << 16:
            raise DemandInputError(f"{p}:1: the header line is longer than 64 KiB: not a request log")
        return Scan(end_offset=start_offset, end_line=start_line)  # the header is still being written
    parse, has_header = make_parser(p, fmt, head.decode("utf-8", "replace").strip(), columns, timestamp_unit,
                                    service)
    out = Scan(end_offset=start_offset, end_line=start_line)
    limit = MAX_TRACE_BYTES if max_bytes is None else max_bytes
    try:
        with _open_binary(p) as f:
            if start_offset:
                if is_compressed(p):
                    _skip(f, start_offset)
                else:
                    f.seek(start_offset)
            data = f.read(limit)
            more = len(data) == limit and bool(f.read(1))
    except _READ_ERRORS as e:
        raise _read_error(p, e) from None
    if more and max_bytes is None:
        raise DemandInputError(f"{p}: more than {MAX_TRACE_BYTES >> 20} MiB of requests (decompressed): too large to "
                               "replay whole; split it into shorter traces")
    end = len(data) if (complete and not more) else data.rfind(b"\n") + 1
    if end == 0 and more:
        # One line fills the whole read (a binary file, a runaway writer): report it, skip past it.
        end = len(data)
    out.exhausted = not more
    offset, line_no = start_offset, start_line
    pos = 0
    while pos < end:
        nl = data.find(b"\n", pos, end)
        stop = end if nl < 0 else nl + 1
        raw = data[pos:stop]
        line_no += 1
        row_offset = offset + pos
        pos = stop
        if line_no == 1 and has_header:
            continue
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            bad = BadRow(str(p), line_no, "<line>", f"{len(raw):,} bytes long: longer than {MAX_LINE_BYTES:,} "
                         "(not a request row)")
        else:
            try:
                text = raw.decode("utf-8").strip()
                got = parse(text)
            except UnicodeDecodeError as e:
                bad = BadRow(str(p), line_no, "<line>", f"not UTF-8 text ({e.reason} at byte {e.start})")
            except RowError as e:
                bad = BadRow(str(p), line_no, e.field, str(e)[:300])
            else:
                if got is not None:  # None: not a request of this service (a gateway log holds all)
                    out.rows.append(RequestRow(got[0], got[1], got[2], line_no, row_offset,
                                               got[3] if len(got) > 3 else None))
                continue
        if on_bad_row == "reject":
            raise DemandInputError(str(bad))
        out.bad_count += 1
        if len(out.bad) < KEEP_BAD_ROWS:
            out.bad.append(bad)
        if max_bad_rows is not None and out.bad_count > max_bad_rows:
            raise DemandInputError(f"{p}: more than {max_bad_rows} malformed rows in its first {line_no} lines (not a "
                                   f"{fmt} request log?); first: {out.bad[0]}")
    out.end_offset = offset + end
    out.end_line = line_no
    return out


def _skip(f, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            break
        n -= len(chunk)


# -- a whole file, for replay -----------------------------------------------------------------

@dataclass
class RequestTrace:
    """Arrivals as seconds since `start` (sorted), with sizes in tokens: a request log read whole."""

    source: str
    start: datetime
    t: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    bad_rows: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.t.size)

    @property
    def duration_s(self) -> float:
        return float(self.t[-1]) if self.t.size else 0.0


def read_trace(path: str | Path, fmt: str = "auto", on_bad_row: Literal["skip", "reject"] = "skip",
               max_bad_rows: int = 1000, columns: dict[str, str] | None = None,
               service: str | None = None) -> RequestTrace:
    """A whole request log as a `RequestTrace` (replay). Errors name the file and line.

    `service`: of a gateway log, which holds every service's requests, only this one's."""
    p = Path(path)
    if not p.is_file():
        raise DemandInputError(f"{p}: trace file not found")
    res = scan(p, fmt, columns, complete=True, on_bad_row=on_bad_row, max_bad_rows=max_bad_rows, service=service)
    if not res.rows:
        first = f"; first problem: {res.bad[0]}" if res.bad else ""
        raise DemandInputError(f"{p}: no valid requests in the trace{first}")
    t = np.fromiter((r.timestamp for r in res.rows), dtype=float, count=len(res.rows))
    ins = np.fromiter((r.input_tokens for r in res.rows), dtype=np.int64, count=len(res.rows))
    outs = np.fromiter((r.output_tokens for r in res.rows), dtype=np.int64, count=len(res.rows))
    order = np.argsort(t, kind="stable")
    t = t[order]
    t0 = float(t[0])
    if t[-1] - t0 > MAX_TRACE_SPAN_S:
        first, last = res.rows[int(order[0])], res.rows[int(order[-1])]
        raise DemandInputError(
            f"{p}: spans {(t[-1] - t0) / 86400:,.0f} days ({_iso(t0)} at line {first.line} .. {_iso(float(t[-1]))} at "
            f"line {last.line}), more than {MAX_TRACE_SPAN_S / 86400:.0f}: a timestamp in another unit or year?")
    return RequestTrace(source=str(p), start=datetime.fromtimestamp(t0, tz=timezone.utc), t=t - t0,
                        input_tokens=ins[order], output_tokens=outs[order], bad_rows=[str(b) for b in res.bad])


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")
