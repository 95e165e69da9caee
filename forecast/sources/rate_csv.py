"""Rate series from CSV: the generic `timestamp,rate` format and the ServeGen pool table."""

from __future__ import annotations

import csv
import io
import lzma
import gzip
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import numpy as np

from forecast.series import RateSeries, series_from_points
from forecast.sources import SourceError


def open_text(path: str | Path) -> IO[str]:
    p = Path(path)
    try:
        if p.suffix == ".xz":
            return io.TextIOWrapper(lzma.open(p, "rb"), encoding="utf-8", newline="")
        if p.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
        return open(p, encoding="utf-8", newline="")
    except OSError as e:
        raise SourceError(f"{p}: cannot open: {e.strerror or e}") from None


def parse_timestamp(text: str) -> float:
    """Epoch seconds, or ISO 8601 (a naive time is UTC). Raises ValueError."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_rate_csv(path: str | Path, step_s: float | None = None) -> RateSeries:
    """`timestamp,rate` rows, one per window start; blank rate = missing window (never 0)."""
    times, rates = [], []
    with open_text(path) as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for need in ("timestamp", "rate"):
            if need not in cols:
                raise SourceError(f"{path}: line 1: missing column {need!r} (have {cols})")
        for row in reader:
            line = reader.line_num
            try:
                t = parse_timestamp(row["timestamp"] or "")
            except ValueError:
                raise SourceError(f"{path}: line {line}: field 'timestamp': not epoch seconds or ISO 8601: {row['timestamp']!r}") from None
            raw = (row["rate"] or "").strip()
            if raw == "":
                r = math.nan
            else:
                try:
                    r = float(raw)
                except ValueError:
                    raise SourceError(f"{path}: line {line}: field 'rate': not a number: {raw!r}") from None
                if r < 0 or math.isinf(r):
                    raise SourceError(f"{path}: line {line}: field 'rate': must be a finite rate >= 0, got {raw!r}")
            times.append(t)
            rates.append(r)
    if not times:
        raise SourceError(f"{path}: no rows")
    try:
        return series_from_points(times, rates, step_s)
    except ValueError as e:
        raise SourceError(f"{path}: {e}") from None


def parse_select(select: str | None) -> dict[str, str]:
    """`model=m-large[,category=language]` -> {"model": "m-large", ...}."""
    out: dict[str, str] = {}
    for part in (select or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise SourceError(f"--select wants KEY=VALUE, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def read_servegen_pool(path: str | Path, select: str | dict | None = None, origin_s: float = 0.0) -> RateSeries:
    """One pool's `total_rate_rps` from servegen_pool_rates_10min.csv.

    A window where the total is exactly 0 with no active client is a collection
    gap (DATA-README §3b: every client reads 0 at once), so it becomes NaN.
    `window_start_s` counts from local midnight of day 0 (ServeGen's own
    examples), placed at `origin_s` (default: the epoch, a midnight).
    """
    sel = parse_select(select) if not isinstance(select, dict) else dict(select)
    times, rates = [], []
    models = set()
    with open_text(path) as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for need in ("model", "window_start_s", "total_rate_rps"):
            if need not in cols:
                raise SourceError(f"{path}: line 1: missing column {need!r}")
        for key in sel:
            if key not in cols:
                raise SourceError(f"{path}: --select key {key!r} is not a column (have {cols})")
        for row in reader:
            models.add(row["model"])
            if any(row[k] != v for k, v in sel.items()):
                continue
            line = reader.line_num
            try:
                t = float(row["window_start_s"])
                r = float(row["total_rate_rps"])
            except ValueError:
                raise SourceError(f"{path}: line {line}: window_start_s/total_rate_rps not numeric") from None
            active = row.get("active_clients")
            if r == 0.0 and (active is None or active.strip() in ("", "0")):
                r = math.nan
            times.append(origin_s + t)
            rates.append(r)
    if not times:
        raise SourceError(f"{path}: no rows match {sel or 'the selection'}; models: {sorted(models)}")
    if len({t for t in times}) != len(times) and "model" not in sel:
        raise SourceError(f"{path}: several pools share timestamps; pick one with --select model=NAME (have {sorted(models)})")
    return series_from_points(np.array(times), np.array(rates), 600.0)
