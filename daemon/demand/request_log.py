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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from daemon.demand.errors import DemandInputError

FORMATS = ("azure", "jsonl", "csv")
FIELDS = ("timestamp", "input_tokens", "output_tokens")
AZURE_COLUMNS = {"timestamp": "TIMESTAMP", "input_tokens": "ContextTokens", "output_tokens": "GeneratedTokens"}
JSONL_KEYS = {"timestamp": "timestamp", "input_tokens": "input_length", "output_tokens": "output_length"}
CSV_COLUMNS = {"timestamp": "timestamp", "input_tokens": "input_tokens", "output_tokens": "output_tokens"}

# Sanity bounds: beyond them a value is a typo or corruption, not a request. The largest
# context windows offered today are a few million tokens; 1e8 leaves room for any of them.
MAX_TOKENS = 100_000_000
MIN_EPOCH_S = 0.0  # 1970
MAX_EPOCH_S = 7_258_118_400.0  # 2200-01-01: a far-future timestamp is a clock or unit error

_COMPRESSED = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


@dataclass(frozen=True)
class RequestRow:
    timestamp: float  # epoch seconds, UTC
    input_tokens: int
    output_tokens: int
    line: int  # 1-based line number in the file
    offset: int = 0  # byte offset of the line's start (decompressed bytes for compressed files)


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
    if isinstance(value, (int, float)):
        t = float(value) * unit
    else:
        text = str(value)
        try:
            t = float(text.strip()) * unit
        except ValueError:
            t = parse_time(text)
    if not math.isfinite(t) or not MIN_EPOCH_S <= t < MAX_EPOCH_S:
        raise ValueError(f"time {value!r} is outside 1970..2200 (wrong unit?)")
    return t


def _tokens(value) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a token count")
    try:
        v = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise ValueError(f"must be a non-negative integer, got {value!r}")
    if v > MAX_TOKENS:
        raise ValueError(f"{value!r} tokens is beyond {MAX_TOKENS:,} (not a real request)")
    return int(v)


# -- formats: a parser per format, built from the file's first line -----------------------

LineParser = Callable[[str], tuple[float, int, int]]  # raises RowError


def detect_format(path: Path, head: bytes) -> str:
    text = head.lstrip()
    if text.startswith(b"{"):
        return "jsonl"
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


def make_parser(path: Path, fmt: str, header: str, columns: dict[str, str] | None = None,
                timestamp_unit: float | None = None) -> tuple[LineParser, bool]:
    """(parser of one line, whether the first line is a header to skip)."""
    if fmt == "jsonl":
        keys = {**JSONL_KEYS, **(columns or {})}
        unit = 1e-3 if timestamp_unit is None else timestamp_unit

        def parse_json(line: str) -> tuple[float, int, int]:
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise RowError("<line>", f"not JSON: {e}") from None
            if not isinstance(obj, dict):
                raise RowError("<line>", "not a JSON object")
            vals = []
            for name in FIELDS:
                key = keys[name]
                if key not in obj:
                    raise RowError(key, "missing")
                try:
                    vals.append(_epoch(obj[key], unit) if name == "timestamp" else _tokens(obj[key]))
                except (ValueError, TypeError) as e:
                    raise RowError(key, str(e)) from None
            return vals[0], vals[1], vals[2]

        return parse_json, False
    if fmt not in ("azure", "csv"):
        raise DemandInputError(f"{path}: unknown request-log format {fmt!r} (allowed: auto, {', '.join(FORMATS)})")
    cols = AZURE_COLUMNS if fmt == "azure" else {**CSV_COLUMNS, **(columns or {})}
    names = next(csv.reader([header]), [])
    names = [n.strip() for n in names]
    missing = [f"{c!r} ({k})" for k, c in cols.items() if c not in names]
    if missing:
        raise DemandInputError(f"{path}:1: header has no column {', '.join(missing)} for format {fmt} "
                               f"(header: {names})")
    index = [names.index(cols[name]) for name in FIELDS]
    width = len(names)
    unit = 1.0 if timestamp_unit is None else timestamp_unit

    def parse_csv(line: str) -> tuple[float, int, int]:
        rec = next(csv.reader([line]), [])
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
    bad: list[BadRow] = field(default_factory=list)
    end_offset: int = 0  # first byte not consumed (the start of a half-written last line)
    end_line: int = 0  # lines consumed before end_offset
    exhausted: bool = True  # False: stopped at max_bytes, more complete lines follow


def _open_binary(path: Path):
    opener = _COMPRESSED.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")


def first_line(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.readline(1 << 16)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DemandInputError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None


def scan(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None, start_offset: int = 0,
         start_line: int = 0, *, complete: bool | None = None, on_bad_row: Literal["skip", "reject"] = "skip",
         max_bytes: int | None = None, timestamp_unit: float | None = None) -> Scan:
    """Rows from byte `start_offset` to the last complete line (all of it when `complete`).

    `start_line` is the number of lines before `start_offset` (for line numbers in
    errors; 0 at the start). `complete`: the file is finished, so a last line
    without a newline is a row too (default: yes for compressed files, no for
    plain ones, which may be growing). `max_bytes` bounds one read of a plain
    file; `exhausted` says whether it got to the end.
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
        return Scan(end_offset=start_offset, end_line=start_line)  # the header is still being written
    parse, has_header = make_parser(p, fmt, head.decode("utf-8", "replace").strip(), columns, timestamp_unit)
    out = Scan(end_offset=start_offset, end_line=start_line)
    try:
        with _open_binary(p) as f:
            if start_offset:
                if is_compressed(p):
                    _skip(f, start_offset)
                else:
                    f.seek(start_offset)
            data = f.read() if max_bytes is None or is_compressed(p) else f.read(max_bytes)
            more = max_bytes is not None and not is_compressed(p) and len(data) == max_bytes and bool(f.read(1))
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DemandInputError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    end = len(data) if (complete and not more) else data.rfind(b"\n") + 1
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
        try:
            text = raw.decode("utf-8").strip()
            t, a, b = parse(text)
        except UnicodeDecodeError as e:
            bad = BadRow(str(p), line_no, "<line>", f"not UTF-8 text ({e.reason} at byte {e.start})")
        except RowError as e:
            bad = BadRow(str(p), line_no, e.field, str(e))
        else:
            out.rows.append(RequestRow(t, a, b, line_no, row_offset))
            continue
        if on_bad_row == "reject":
            raise DemandInputError(str(bad))
        out.bad.append(bad)
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
               max_bad_rows: int = 1000, columns: dict[str, str] | None = None) -> RequestTrace:
    """A whole request log as a `RequestTrace` (replay). Errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise DemandInputError(f"{p}: trace file not found")
    res = scan(p, fmt, columns, complete=True, on_bad_row=on_bad_row)
    if len(res.bad) > max_bad_rows:
        raise DemandInputError(f"{p}: {len(res.bad)} malformed rows (more than {max_bad_rows}); first: {res.bad[0]}")
    if not res.rows:
        first = f"; first problem: {res.bad[0]}" if res.bad else ""
        raise DemandInputError(f"{p}: no valid requests in the trace{first}")
    t = np.fromiter((r.timestamp for r in res.rows), dtype=float, count=len(res.rows))
    ins = np.fromiter((r.input_tokens for r in res.rows), dtype=np.int64, count=len(res.rows))
    outs = np.fromiter((r.output_tokens for r in res.rows), dtype=np.int64, count=len(res.rows))
    order = np.argsort(t, kind="stable")
    t = t[order]
    t0 = float(t[0])
    return RequestTrace(source=str(p), start=datetime.fromtimestamp(t0, tz=timezone.utc), t=t - t0,
                        input_tokens=ins[order], output_tokens=outs[order], bad_rows=[str(b) for b in res.bad])
