"""Spot availability traces (Can't-Be-Late / SkyServe / SkyNomad JSON) for replay.

File shape: `{"metadata": {"gap_seconds": G}, "data": [v0, v1, ...]}`; tick i
covers [i*G, (i+1)*G) seconds after the trace start. Value convention (see
shared/data/spot/DATA-README.md, "raw convention"): the value is the number of
spot instances AVAILABLE or alive in that zone; 0 means none could be had. The
original Can't-Be-Late simulator reads it inverted; we do not.

File names start with the zone (`us-east-1a_v100_1.json`); the trace of a zone
stands for every spot offering in that zone (the traces are V100 p3.2xlarge,
the only public multi-week GPU spot availability data we have).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


class SpotTraceError(Exception):
    pass


@dataclass(frozen=True)
class AvailabilityTrace:
    zone: str
    gap_seconds: float
    values: tuple[float, ...]
    source: str

    @property
    def duration_s(self) -> float:
        return self.gap_seconds * len(self.values)

    def available(self, offset_s: float) -> bool:
        """Whether spot capacity exists `offset_s` after the trace start (wraps around)."""
        if not self.values:
            return True
        tick = int(offset_s // self.gap_seconds) % len(self.values)
        return self.values[tick] > 0

    def next_change(self, offset_s: float) -> float | None:
        """Offset of the next tick whose availability differs from the one at offset_s, within one period."""
        n = len(self.values)
        if n == 0:
            return None
        start = int(offset_s // self.gap_seconds)
        now = self.values[start % n] > 0
        for k in range(1, n + 1):
            if (self.values[(start + k) % n] > 0) != now:
                return (start + k) * self.gap_seconds
        return None

    def outages(self, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """Offsets (a, b) within [start_s, end_s] with no spot capacity (the trace wraps around)."""
        n = len(self.values)
        if n == 0 or end_s <= start_s:
            return []
        g = self.gap_seconds
        out: list[tuple[float, float]] = []
        k = int(start_s // g)
        last = int(end_s // g)
        while k <= last:
            if self.values[k % n] > 0:
                k += 1
                continue
            a = k
            while k <= last and self.values[k % n] <= 0:
                k += 1
            lo, hi = max(start_s, a * g), min(end_s, k * g)
            if hi > lo:
                out.append((lo, hi))
        return out


MAX_TRACE_FILE_BYTES = 256 << 20  # the public traces are a few MB; a larger file is not one of them


def load_trace(path: Path) -> AvailabilityTrace:
    """One trace file; every malformed input is a SpotTraceError naming the file (and the value)."""
    try:
        if path.stat().st_size > MAX_TRACE_FILE_BYTES:
            raise SpotTraceError(f"{path}: larger than {MAX_TRACE_FILE_BYTES >> 20} MiB: not a spot availability trace")
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise SpotTraceError(f"{path}: cannot read spot trace: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested past the stack
        raise SpotTraceError(f"{path}: cannot read spot trace: not JSON ({str(e)[:200]})") from None
    try:
        gap = doc["metadata"]["gap_seconds"]
        data = doc["data"]
    except (KeyError, TypeError, IndexError):
        raise SpotTraceError(f"{path}: expected {{'metadata': {{'gap_seconds': G}}, 'data': [...]}}") from None
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or not 0 < gap <= 86400:
        raise SpotTraceError(f"{path}: metadata.gap_seconds must be a number > 0 and <= 86400, got {gap!r}")
    if not isinstance(data, list):
        raise SpotTraceError(f"{path}: data must be a list of numbers, got {type(data).__name__}")
    values = []
    for k, v in enumerate(data):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise SpotTraceError(f"{path}: data[{k}] must be a finite non-negative number, got {v!r}")
        values.append(float(v))
    zone = path.name.split("_", 1)[0]
    return AvailabilityTrace(zone=zone, gap_seconds=float(gap), values=tuple(values), source=str(path))


def load_trace_dir(directory: str | Path) -> dict[str, AvailabilityTrace]:
    d = Path(directory)
    if not d.is_dir():
        raise SpotTraceError(f"{d}: spot trace directory not found")
    traces = {}
    for p in sorted(d.glob("*.json")):
        t = load_trace(p)
        traces[t.zone] = t
    if not traces:
        raise SpotTraceError(f"{d}: no *.json spot traces in it")
    return traces
