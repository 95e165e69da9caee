"""Request logs (one row per request) read incrementally, and their aggregation into demand windows.

Formats:
- `azure`: Azure LLM inference trace 2023 CSV: TIMESTAMP (`YYYY-MM-DD HH:MM:SS.fffffff`,
  no zone given: read as UTC), ContextTokens, GeneratedTokens.
- `jsonl`: one object per line with `timestamp` (epoch milliseconds), `input_length`, `output_length`.
- `csv`: any CSV with a header, through a column mapping
  {"timestamp": COL, "input_tokens": COL, "output_tokens": COL}; timestamps epoch seconds or ISO 8601.

Tailing: `read_request_log(..., start_offset=N)` reads from byte N to the last
complete line and returns the offset to resume from; a half-written last line
is left for the next call. (For .xz/.gz files the offset counts decompressed
bytes; compressed logs are for replay, not for tailing.)

Bad rows: with on_bad="raise" the iterator raises `RequestLogError` naming
file, line and field; with on_bad="skip" it records a `BadRow` in `errors` and
goes on (config: `on_bad_row = "skip" | "reject"`).
"""

from __future__ import annotations

import csv
import gzip
import json
import lzma
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal, Sequence

from daemon.domain import BucketGrid, DemandWindow
from forecast.series import from_epoch
from forecast.sources import SourceError

AZURE_COLUMNS = {"timestamp": "TIMESTAMP", "input_tokens": "ContextTokens", "output_tokens": "GeneratedTokens"}
JSONL_KEYS = {"timestamp": "timestamp", "input_tokens": "input_length", "output_tokens": "output_length"}


class RequestLogError(SourceError):
    pass


@dataclass(frozen=True)
class RequestRow:
    timestamp: float  # epoch seconds, UTC
    input_tokens: int
    output_tokens: int
    line: int


@dataclass(frozen=True)
class BadRow:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: line {self.line}: field {self.field!r}: {self.message}"


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".xz":
            return lzma.open(path, "rb").read()
        if path.suffix == ".gz":
            return gzip.open(path, "rb").read()
        return path.read_bytes()
    except (OSError, lzma.LZMAError) as e:
        raise RequestLogError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None


def _read_from(path: Path, offset: int) -> tuple[bytes, bytes]:
    """(first line of the file, bytes from offset to EOF)."""
    if path.suffix in (".xz", ".gz"):
        data = _read_bytes(path)
        nl = data.find(b"\n")
        return data[: nl + 1 if nl >= 0 else len(data)], data[offset:]
    try:
        with open(path, "rb") as f:
            head = f.readline()
            f.seek(offset)
            return head, f.read()
    except OSError as e:
        raise RequestLogError(f"{path}: cannot read: {e.strerror}") from None


def _lines_before(path: Path, offset: int) -> int:
    if offset == 0:
        return 0
    if path.suffix in (".xz", ".gz"):
        return _read_bytes(path)[:offset].count(b"\n")
    n = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def detect_format(path: Path, head: bytes) -> str:
    name = path.name.lower()
    if ".jsonl" in name or head.lstrip().startswith(b"{"):
        return "jsonl"
    if b"ContextTokens" in head and b"TIMESTAMP" in head:
        return "azure"
    return "csv"


def parse_time(text: str, fieldname: str = "timestamp") -> float:
    """Epoch seconds, or ISO 8601 / Azure's 7-digit fractions; naive times are UTC."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    frac = ""
    if "." in s:
        s, rest = s.split(".", 1)
        digits = ""
        for ch in rest:
            if not ch.isdigit():
                break
            digits += ch
        tz = rest[len(digits) :]
        frac = digits
        s = s + tz
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s.replace(" ", "T", 1))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def _tokens(value, fieldname: str) -> int:
    if isinstance(value, bool):
        raise ValueError("not a token count")
    if isinstance(value, (int, float)):
        v = float(value)
    else:
        v = float(str(value).strip())
    if math.isnan(v) or v < 0 or v != int(v):
        raise ValueError(f"must be a non-negative integer, got {value!r}")
    return int(v)


def read_request_log(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
                     start_offset: int = 0, *, on_bad: Literal["raise", "skip"] = "raise",
                     errors: list | None = None, timestamp_unit: float | None = None,
                     complete: bool | None = None) -> tuple[Iterator[RequestRow], int]:
    """(rows from start_offset to the last complete line, the offset to resume from).

    `timestamp_unit` scales numeric timestamps to seconds (jsonl default 1e-3: milliseconds).
    `complete`: the file is finished, so a last line without a newline is a row too
    (default: yes for .xz/.gz, no for plain files, which may be growing).
    """
    p = Path(path)
    head, data = _read_from(p, start_offset)
    if complete is None:
        complete = p.suffix in (".xz", ".gz")
    added = 0
    if complete and data and not data.endswith(b"\n"):
        data, added = data + b"\n", 1  # the last row of a finished file; the offset below stays within the file
    if fmt == "auto":
        fmt = detect_format(p, head)
    if fmt not in ("azure", "jsonl", "csv"):
        raise RequestLogError(f"{p}: unknown format {fmt!r} (azure, jsonl, csv)")
    end = data.rfind(b"\n")
    if end < 0:
        return iter(()), start_offset
    chunk = data[: end + 1]
    new_offset = start_offset + len(chunk) - added
    first_line = _lines_before(p, start_offset) + 1
    if fmt == "jsonl":
        unit = 1e-3 if timestamp_unit is None else timestamp_unit
        keys = dict(JSONL_KEYS, **(columns or {}))
        rows = _jsonl_rows(p, chunk, first_line, keys, unit, on_bad, errors)
    else:
        cols = AZURE_COLUMNS if fmt == "azure" else dict(columns or {})
        missing = [k for k in ("timestamp", "input_tokens", "output_tokens") if k not in cols]
        if missing:
            raise RequestLogError(f"{p}: format csv needs a column mapping for {missing}")
        header = next(csv.reader([head.decode("utf-8", "replace").strip()]))
        for k, c in cols.items():
            if c not in header:
                raise RequestLogError(f"{p}: line 1: no column {c!r} for {k} (header: {header})")
        if start_offset == 0:  # the header is in the chunk
            nl = chunk.find(b"\n")
            chunk = chunk[nl + 1 :]
            first_line += 1
        unit = 1.0 if timestamp_unit is None else timestamp_unit
        rows = _csv_rows(p, chunk, first_line, header, cols, unit, on_bad, errors)
    return rows, new_offset


def _bad(p: Path, line: int, fieldname: str, msg: str, on_bad: str, errors: list | None):
    bad = BadRow(str(p), line, fieldname, msg)
    if on_bad == "raise":
        raise RequestLogError(str(bad))
    if errors is not None:
        errors.append(bad)


def _jsonl_rows(p, chunk, first_line, keys, unit, on_bad, errors) -> Iterator[RequestRow]:
    for k, raw in enumerate(chunk.split(b"\n")[:-1]):
        line = first_line + k
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            _bad(p, line, "<line>", f"not a JSON object: {e}", on_bad, errors)
            continue
        vals = {}
        for name, key in keys.items():
            if key not in obj:
                _bad(p, line, key, "missing", on_bad, errors)
                break
            try:
                if name == "timestamp":
                    v = obj[key]
                    vals[name] = float(v) * unit if isinstance(v, (int, float)) and not isinstance(v, bool) else parse_time(str(v))
                else:
                    vals[name] = _tokens(obj[key], key)
            except (ValueError, TypeError) as e:
                _bad(p, line, key, str(e) or "invalid", on_bad, errors)
                break
        else:
            yield RequestRow(vals["timestamp"], vals["input_tokens"], vals["output_tokens"], line)


def _csv_rows(p, chunk, first_line, header, cols, unit, on_bad, errors) -> Iterator[RequestRow]:
    text = chunk.decode("utf-8", "replace")
    index = {name: header.index(c) for name, c in cols.items()}
    for k, raw in enumerate(text.split("\n")[:-1]):
        line = first_line + k
        if not raw.strip():
            continue
        rec = next(csv.reader([raw]))
        if len(rec) < len(header):
            _bad(p, line, "<line>", f"{len(rec)} fields, header has {len(header)}", on_bad, errors)
            continue
        try:
            ts_raw = rec[index["timestamp"]]
            try:
                ts = float(ts_raw) * unit
            except ValueError:
                ts = parse_time(ts_raw)
        except ValueError:
            _bad(p, line, cols["timestamp"], f"not a time: {rec[index['timestamp']]!r}", on_bad, errors)
            continue
        try:
            inp = _tokens(rec[index["input_tokens"]], cols["input_tokens"])
        except ValueError as e:
            _bad(p, line, cols["input_tokens"], str(e), on_bad, errors)
            continue
        try:
            out = _tokens(rec[index["output_tokens"]], cols["output_tokens"])
        except ValueError as e:
            _bad(p, line, cols["output_tokens"], str(e), on_bad, errors)
            continue
        yield RequestRow(ts, inp, out, line)


def windows_from_rows(rows: Sequence[RequestRow] | Iterator[RequestRow], grid: BucketGrid, window_s: float,
                      service: str, until: float | None = None, since: float | None = None) -> list[DemandWindow]:
    """Count requests per window (aligned to multiples of window_s since the epoch) and size bucket.

    A request log observes continuously, so a window between the first and the
    last request with no request in it is a real 0 and is emitted. Windows not
    finished by `until` are left out (the next poll completes them).
    """
    cells: dict[int, list] = {}
    for r in rows:
        k = math.floor(r.timestamp / window_s)
        if since is not None and k * window_s < since:
            continue
        acc = cells.get(k)
        if acc is None:
            acc = cells[k] = [[[0.0] * grid.n_output for _ in range(grid.n_input)], 0.0, 0.0]
        i, j = grid.locate(r.input_tokens, r.output_tokens)
        acc[0][i][j] += 1
        acc[1] += r.input_tokens
        acc[2] += r.output_tokens
    if not cells:
        return []
    lo, hi = min(cells), max(cells)
    if since is not None:
        lo = min(lo, math.ceil(since / window_s))
    out = []
    for k in range(lo, hi + 1):
        if until is not None and (k + 1) * window_s > until + 1e-9:
            break
        acc = cells.get(k)
        if acc is None:
            counts = tuple(tuple(0.0 for _ in range(grid.n_output)) for _ in range(grid.n_input))
            out.append(DemandWindow(service, from_epoch(k * window_s), window_s, counts, 0.0, 0.0))
        else:
            out.append(DemandWindow(service, from_epoch(k * window_s), window_s,
                                    tuple(tuple(r) for r in acc[0]), acc[1], acc[2]))
    return out


class RequestLogTail:
    """Follows a growing request log: each `poll(now)` returns the windows completed since the last.

    The only state is the byte offset and the requests of windows not yet
    finished; a restart from a stored offset loses at most the open window.
    """

    def __init__(self, path: str | Path, service: str, grid: BucketGrid, window_s: float = 60.0, fmt: str = "auto",
                 columns: dict[str, str] | None = None, offset: int = 0, on_bad: Literal["raise", "skip"] = "skip"):
        self.path, self.service, self.grid, self.window_s = Path(path), service, grid, window_s
        self.fmt, self.columns, self.offset, self.on_bad = fmt, columns, offset, on_bad
        self.pending: list[RequestRow] = []
        self.errors: list[BadRow] = []
        self.emitted_until: float | None = None

    def poll(self, now: float) -> list[DemandWindow]:
        rows, self.offset = read_request_log(self.path, self.fmt, self.columns, self.offset,
                                             on_bad=self.on_bad, errors=self.errors)
        self.pending.extend(rows)
        wins = windows_from_rows(self.pending, self.grid, self.window_s, self.service, until=now,
                                 since=self.emitted_until)
        if wins:
            from forecast.series import to_epoch

            self.emitted_until = to_epoch(wins[-1].start) + self.window_s
            self.pending = [r for r in self.pending if r.timestamp >= self.emitted_until]
        return wins
