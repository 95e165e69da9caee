"""Request-log traces: one row per request (arrival time, input tokens, output tokens).

Formats:
- `azure`: the Azure LLM inference trace 2023 (Splitwise) CSV: TIMESTAMP
  (`YYYY-MM-DD HH:MM:SS.fffffff`, treated as UTC), ContextTokens, GeneratedTokens.
- `jsonl`: one object per line with `timestamp` (ms since the epoch or since the
  trace start), `input_length`, `output_length`.
- `csv`: columns `timestamp` (epoch seconds or ISO 8601), `input_tokens`, `output_tokens`.
`auto` picks by the header / first line. `.xz`, `.gz` and `.bz2` are read compressed.

A malformed row is reported with its line number; `on_bad_row="skip"` skips
and counts it (the caller logs every one), `"reject"` raises on the first.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


class TraceError(Exception):
    pass


@dataclass
class RequestTrace:
    """Arrivals as seconds since `start` (sorted), with sizes in tokens."""

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


def _open_text(path: Path) -> io.TextIOBase:
    suffix = path.suffix.lower()
    opener = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}.get(suffix)
    if opener is not None:
        return opener(path, "rt", encoding="utf-8", newline="")
    return open(path, "rt", encoding="utf-8", newline="")


def _parse_time(value: str) -> float:
    """Epoch seconds from ISO 8601 / 'YYYY-MM-DD HH:MM:SS.fffffff' / a number."""
    v = value.strip()
    try:
        return float(v)
    except ValueError:
        pass
    # Azure writes 7 fractional digits; Python takes at most 6.
    if "." in v:
        head, frac = v.split(".", 1)
        digits = "".join(ch for ch in frac if ch.isdigit())
        rest = frac[len(digits):]
        v = f"{head}.{digits[:6]}{rest}"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _detect(path: Path) -> str:
    with _open_text(path) as f:
        first = f.readline().strip()
    if first.startswith("{"):
        return "jsonl"
    cols = [c.strip() for c in first.split(",")]
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= set(cols):
        return "azure"
    if {"timestamp", "input_tokens", "output_tokens"} <= set(cols):
        return "csv"
    raise TraceError(
        f"{path}:1: cannot tell the trace format from the first line {first[:80]!r}; expected an Azure "
        "header (TIMESTAMP,ContextTokens,GeneratedTokens), a CSV header (timestamp,input_tokens,output_tokens) "
        "or a JSON object per line"
    )


def _rows(path: Path, fmt: str):
    """Yield (line number, timestamp string/number, input, output) or (line, None, error message)."""
    with _open_text(path) as f:
        if fmt == "jsonl":
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    ts = obj["timestamp"]
                    yield line_no, float(ts) / 1000.0, obj["input_length"], obj["output_length"]
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    yield line_no, None, f"{type(e).__name__}: {e}", None
            return
        cols = ("TIMESTAMP", "ContextTokens", "GeneratedTokens") if fmt == "azure" else (
            "timestamp", "input_tokens", "output_tokens")
        reader = csv.DictReader(f)
        missing = [c for c in cols if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}:1: missing columns {missing} for format {fmt}")
        for row in reader:
            line_no = reader.line_num
            try:
                yield line_no, _parse_time(row[cols[0]]), row[cols[1]], row[cols[2]]
            except (ValueError, TypeError, AttributeError) as e:
                yield line_no, None, f"bad timestamp {row.get(cols[0])!r}: {e}", None


def read_trace(path: str | Path, fmt: str = "auto", on_bad_row: str = "skip", max_bad_rows: int = 1000) -> RequestTrace:
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: trace file not found")
    if fmt == "auto":
        fmt = _detect(p)
    if fmt not in ("azure", "jsonl", "csv"):
        raise TraceError(f"{p}: unknown trace format {fmt!r} (allowed: auto, azure, jsonl, csv)")
    ts: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    bad: list[str] = []
    try:
        for line_no, t, a, b in _rows(p, fmt):
            err = None
            if t is None:
                err = a
            else:
                try:
                    ai, bi = int(float(a)), int(float(b))
                    if ai < 0 or bi < 0:
                        err = f"negative token count ({a}, {b})"
                except (TypeError, ValueError):
                    err = f"token counts must be integers, got ({a!r}, {b!r})"
            if err is not None:
                msg = f"{p}:{line_no}: {err}"
                if on_bad_row == "reject":
                    raise TraceError(msg)
                bad.append(msg)
                if len(bad) > max_bad_rows:
                    raise TraceError(f"{p}: more than {max_bad_rows} malformed rows; first: {bad[0]}")
                continue
            ts.append(float(t))
            ins.append(ai)
            outs.append(bi)
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:
        raise TraceError(f"{p}: cannot read: {e}") from None
    if not ts:
        raise TraceError(f"{p}: no valid requests in the trace")
    t_arr = np.asarray(ts, dtype=float)
    order = np.argsort(t_arr, kind="stable")
    t_arr = t_arr[order]
    t0 = float(t_arr[0])
    start = datetime.fromtimestamp(t0, tz=timezone.utc)
    return RequestTrace(
        source=str(p), start=start, t=t_arr - t0,
        input_tokens=np.asarray(ins, dtype=np.int64)[order],
        output_tokens=np.asarray(outs, dtype=np.int64)[order],
        bad_rows=bad,
    )
