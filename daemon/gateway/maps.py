"""The two HAProxy maps per service, as rows: pure functions, no I/O.

Bucket map (`map_int`, ranges of request bytes): `lo:hi bucket`. The frontend looks up
`req.body_size` in it; the top bucket's range runs to INT_MAX.

Weight map (`map_int`, ranges of a 0..100 x n_input key): `lo:hi backend`. The frontend
computes `bucket x 100 + rand(100)` and looks it up, so a pool owning k of the 100 slots of
a bucket gets k% of that bucket's requests. One row per (bucket, pool) range rather than
100 rows per bucket: the same 1% steps, fewer entries to write and to scan.

Which shares: the plan's routes (`Route`: service, input bucket, pool, weight), restricted to
the pools that have a replica serving now (a pool whose replicas are all booting, draining
or down would answer 503), and renormalized. A bucket left without any such pool borrows the
shares of the nearest bucket that has one, looking upward first (a pool planned for longer
prompts can serve shorter ones), then downward. A service with no serving pool at all keeps
the planned shares: HAProxy then answers 503 either way, and traffic flows as soon as a
replica comes up and the next sync runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from daemon.domain import BucketGrid, Route
from daemon.gateway.bytes_per_token import INT_MAX, BytesPerToken
from daemon.gateway.layout import WEIGHT_ROWS, backend_name


@dataclass(frozen=True)
class MapRow:
    lo: int
    hi: int
    value: str

    @property
    def key(self) -> str:
        return f"{self.lo}:{self.hi}"

    def line(self) -> str:
        return f"{self.key} {self.value}"


def bucket_rows(grid: BucketGrid, bpt: BytesPerToken) -> tuple[MapRow, ...]:
    return rows_from_byte_edges(bpt.byte_edges(grid))


def rows_from_byte_edges(starts: tuple[int, ...]) -> tuple[MapRow, ...]:
    """Rows from the byte each bucket starts at (BytesPerToken.byte_edges); the last runs to INT_MAX."""
    rows = []
    for i, lo in enumerate(starts):
        hi = starts[i + 1] - 1 if i + 1 < len(starts) else INT_MAX
        rows.append(MapRow(lo, hi, str(i)))
    return tuple(rows)


def byte_edges_of(rows: Iterable[MapRow]) -> tuple[int, ...] | None:
    """The bucket starts a bucket map encodes, or None if it is not a contiguous map this package wrote."""
    rows = sorted(rows, key=lambda r: r.lo)
    if not rows or rows[0].lo != 0 or rows[-1].hi != INT_MAX:
        return None
    for k, r in enumerate(rows):
        if r.value != str(k) or (k + 1 < len(rows) and rows[k + 1].lo != r.hi + 1):
            return None
    return tuple(r.lo for r in rows)


def slots(weights: Mapping[str, float], total: int = WEIGHT_ROWS) -> dict[str, int]:
    """Integer slots out of `total` proportional to `weights` (largest remainder; ties by name).

    Every pool with a positive weight keeps at least one slot when there are enough slots,
    so a small planned share is not silently dropped to zero.
    """
    pos = {p: w for p, w in weights.items() if w > 0 and math.isfinite(w)}
    if not pos:
        return {}
    s = sum(pos.values())
    exact = {p: w / s * total for p, w in pos.items()}
    out = {p: int(math.floor(x)) for p, x in exact.items()}
    bumped = set()
    if len(pos) <= total:
        bumped = {p for p, n in out.items() if n == 0}
        for p in bumped:
            out[p] = 1
    left = total - sum(out.values())
    order = sorted((p for p in pos if p not in bumped), key=lambda p: (-(exact[p] - math.floor(exact[p])), p))
    k = 0
    while left > 0 and order:
        out[order[k % len(order)]] += 1
        left -= 1
        k += 1
    while left < 0:  # minimum slots overshot: take from the largest
        p = max(out, key=lambda q: (out[q], q))
        out[p] -= 1
        left += 1
    return {p: n for p, n in out.items() if n > 0}


def planned_shares(service: str, routes: Iterable[Route]) -> tuple[dict[int, dict[str, float]], list[str]]:
    """Per input bucket, pool -> weight of one service (cell routes summed over output buckets)."""
    shares: dict[int, dict[str, float]] = {}
    notes: list[str] = []
    cell = False
    for r in routes:
        if r.service != service or r.weight <= 0:
            continue
        cell = cell or r.output_bucket is not None
        row = shares.setdefault(r.input_bucket, {})
        row[r.pool] = row.get(r.pool, 0.0) + r.weight
    if cell:
        notes.append(f"{service}: routes per (input, output) cell summed per input bucket (a gateway sees only the input)")
    return shares, notes


def effective_shares(n_input: int, planned: Mapping[int, Mapping[str, float]],
                     serving_pools: set[str]) -> tuple[dict[int, dict[str, float]], list[str]]:
    """The shares the weight map carries: planned pools that serve now, renormalized; see the module doc."""
    notes: list[str] = []
    if not serving_pools or not any(planned.values()):
        return {i: dict(planned.get(i, {})) for i in range(n_input) if planned.get(i)}, notes
    live: dict[int, dict[str, float]] = {}
    for i in range(n_input):
        row = {p: w for p, w in planned.get(i, {}).items() if p in serving_pools and w > 0}
        if row:
            s = sum(row.values())
            live[i] = {p: w / s for p, w in row.items()}
            dropped = sorted(set(planned.get(i, {})) - set(row))
            if dropped:
                notes.append(f"bucket {i}: no serving replica in {', '.join(dropped)}; its share goes to the others")
    out = dict(live)
    for i in range(n_input):
        if i in out:
            continue
        donor = next((j for j in range(i + 1, n_input) if j in live), None)
        if donor is None:
            donor = next((j for j in range(i - 1, -1, -1) if j in live), None)
        if donor is None:  # no bucket has a serving planned pool: any serving pool of the service
            pools = sorted(serving_pools)
            out[i] = {p: 1.0 / len(pools) for p in pools}
            notes.append(f"bucket {i}: no planned pool serves; spread over {', '.join(pools)}")
        else:
            out[i] = dict(live[donor])
            if planned.get(i):
                notes.append(f"bucket {i}: no planned pool serves; routed as bucket {donor}")
    return out, notes


def weight_rows(service: str, shares: Mapping[int, Mapping[str, float]]) -> tuple[MapRow, ...]:
    rows = []
    for i in sorted(shares):
        base = i * WEIGHT_ROWS
        at = 0
        for pool, n in sorted(slots(shares[i]).items()):
            rows.append(MapRow(base + at, base + at + n - 1, backend_name(service, pool)))
            at += n
    return tuple(rows)


def shares_of_rows(rows: Iterable[MapRow]) -> dict[int, dict[str, float]]:
    """Backend shares per bucket that a weight map encodes (for status and tests)."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        bucket = r.lo // WEIGHT_ROWS
        out.setdefault(bucket, {})
        out[bucket][r.value] = out[bucket].get(r.value, 0.0) + (r.hi - r.lo + 1) / WEIGHT_ROWS
    return out


def map_file_text(rows: Iterable[MapRow], header: str = "") -> str:
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    lines += [r.line() for r in rows]
    return "\n".join(lines) + "\n"


def parse_map_rows(text: str) -> tuple[MapRow, ...]:
    """Rows of a map file or of `show map` output (`0x55.. key value`); comments skipped.

    Raises ValueError naming the line for a row this package could not have written.
    """
    rows = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0].startswith("0x") and len(parts) >= 3:
            parts = parts[1:]
        if len(parts) != 2 or ":" not in parts[0]:
            raise ValueError(f"line {n}: not a 'lo:hi value' map row: {raw!r}")
        lo, _, hi = parts[0].partition(":")
        try:
            rows.append(MapRow(int(lo), int(hi), parts[1]))
        except ValueError:
            raise ValueError(f"line {n}: range bounds are not integers: {raw!r}") from None
    return tuple(rows)
