"""Typed values that cross the boundaries between the loop's steps.

Everything here is a small frozen dataclass: forecast, plan and reconcile are
pure functions of these values, which is what lets the same code run live and
in a replay in virtual time. Nothing in this module does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property


class Market(StrEnum):
    ON_DEMAND = "on-demand"
    SPOT = "spot"


@dataclass(frozen=True)
class Offering:
    """One rentable shape at one place and market, with the price in effect when read.

    `zone` is None where the cloud has no zones (Azure, Lambda in SkyPilot's catalog).
    """

    cloud: str
    region: str
    zone: str | None
    instance_type: str
    gpu: str
    gpu_count: int
    market: Market
    price_per_hour: float

    @property
    def key(self) -> str:
        """Stable identity of the offering (price excluded: prices move, the place does not)."""
        return "/".join(
            [self.cloud, self.region, self.zone or "-", self.instance_type, str(self.market)]
        )

    @property
    def location(self) -> str:
        """The failure domain spot losses are correlated in (SkyServe: a zone)."""
        return "/".join([self.cloud, self.region, self.zone or "-"])

    @property
    def pool(self) -> str:
        """What a router sees: replicas of the same GPU shape serve the same request sizes."""
        return f"{self.gpu}x{self.gpu_count}"


@dataclass(frozen=True)
class BucketGrid:
    """Request-size buckets: half-open token ranges [edge_k, edge_k+1).

    Sizes at or above the last edge fall in the last bucket, so every request
    lands somewhere (a 20k-token prompt is "long", not an error).
    """

    input_edges: tuple[int, ...]
    output_edges: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, edges in (("input_edges", self.input_edges), ("output_edges", self.output_edges)):
            if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"{name} must start at 0 and increase strictly, got {edges}")

    @property
    def n_input(self) -> int:
        return len(self.input_edges) - 1

    @property
    def n_output(self) -> int:
        return len(self.output_edges) - 1

    @staticmethod
    def _find(edges: tuple[int, ...], value: int) -> int:
        for k in range(len(edges) - 2, -1, -1):
            if value >= edges[k]:
                return k
        return 0

    def locate(self, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        return self._find(self.input_edges, input_tokens), self._find(self.output_edges, output_tokens)

    def input_label(self, i: int) -> str:
        return f"{self.input_edges[i]}-{self.input_edges[i + 1]}"

    def output_label(self, j: int) -> str:
        return f"{self.output_edges[j]}-{self.output_edges[j + 1]}"


Matrix = tuple[tuple[float, ...], ...]


def zeros(rows: int, cols: int) -> Matrix:
    return tuple(tuple(0.0 for _ in range(cols)) for _ in range(rows))


@dataclass(frozen=True)
class DemandWindow:
    """Observed demand of one service over [start, start + seconds).

    `counts[i][j]` is the number of requests in input bucket i and output bucket j.
    A window that was not observed (collection gap) is absent, never all-zero.
    `peaks` are ((seconds, req/s), ...): the highest arrival rate over any aligned slice
    of that many seconds inside the window (BURST_SLICES_S), for sources that see each
    request; empty when the source only counts (Prometheus). See `burst_need`.
    """

    service: str
    start: datetime
    seconds: float
    counts: Matrix
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    peaks: tuple[tuple[float, float], ...] = ()

    # Cached: the forecast reads days of windows every tick. (cached_property writes the
    # instance __dict__ directly, so it works on a frozen dataclass.)
    @cached_property
    def requests(self) -> float:
        return float(sum(sum(row) for row in self.counts))

    @cached_property
    def start_s(self) -> float:
        """Window start as epoch seconds."""
        return self.start.timestamp()

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def mix(self) -> Matrix | None:
        total = self.requests
        if total <= 0:
            return None
        return tuple(tuple(c / total for c in row) for row in self.counts)


# Slices (seconds) a window's burst peaks are measured over: from one second (what a TTFT
# objective of a second or two feels) to half a minute (what it does not).
BURST_SLICES_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def peaks_of_seconds(per_s):
    """Peaks from request counts per one-second slice of a window (1-D: its `peaks`), or of
    one window per row (2-D: a list of them)."""
    import numpy as np

    c = np.asarray(per_s, dtype=float)
    rows = np.atleast_2d(c)
    cols = []
    for d in BURST_SLICES_S:
        k = int(d)
        m = rows.shape[1] // k
        if m < 2:  # a slice as long as the window says nothing the window's rate does not
            continue
        cols.append((d, rows[:, : m * k].reshape(len(rows), m, k).sum(axis=2).max(axis=1) / d))
    out = [tuple((d, float(v[i])) for d, v in cols) for i in range(len(rows))]
    return out[0] if c.ndim == 1 else out


def burst_need(w: "DemandWindow", ttft_s: float) -> float | None:
    """The rate (req/s) a fleet must carry so that the window's worst burst queues for no
    longer than `ttft_s`; None when the window has no peaks or no requests.

    Fluid bound: a burst at rate R for d seconds into capacity C >= rate leaves (R - C) d
    requests waiting, the last for (R/C - 1) d seconds; that stays within ttft_s when
    C >= R d / (d + ttft_s). Short slices weigh little (a queue drains within the TTFT),
    long ones approach their rate. Poisson noise at low rates stays near the mean.
    """
    if not w.peaks or w.requests <= 0:
        return None
    return max(max(r * d / (d + ttft_s) for d, r in w.peaks), w.rate)


@dataclass(frozen=True)
class DemandForecast:
    """Demand the fleet must be sized for at `at + horizon_s`.

    `rate_rps` is the planning quantile of the request rate; `mix[i][j]` the
    share of requests per size bucket (sums to 1, or all zero when unknown).
    """

    service: str
    at: datetime
    horizon_s: float
    rate_rps: float
    mix: Matrix
    method: str
    quantile: float = 0.5
    details: dict = field(default_factory=dict, compare=False)

    def cell_rates(self) -> Matrix:
        return tuple(tuple(self.rate_rps * s for s in row) for row in self.mix)


class CapacityTable:
    """MaxTput per replica: req/s one replica of a GPU shape sustains for a size bucket within SLO.

    Keyed by (service, pool) where pool is e.g. "A10Gx1"; the value is a matrix
    over the service's bucket grid. A missing pool means "cannot serve this
    service"; a 0 cell means "cannot serve this bucket within SLO".
    """

    def __init__(self, table: dict[tuple[str, str], Matrix], provenance: dict[tuple[str, str], str] | None = None):
        self._table = dict(table)
        self.provenance = dict(provenance or {})

    def get(self, service: str, pool: str) -> Matrix | None:
        return self._table.get((service, pool))

    def pools(self, service: str) -> list[str]:
        return sorted(p for (s, p) in self._table if s == service)

    def items(self):
        return self._table.items()


def load_per_replica(rates: Matrix, tput: Matrix) -> float:
    """Replicas needed to carry `rates` on a pool with MaxTput `tput` (Mélange's load, §1 of BACKGROUND).

    Infinite if any demanded cell is unservable.
    """
    load = 0.0
    for rrow, trow in zip(rates, tput):
        for r, t in zip(rrow, trow):
            if r <= 0:
                continue
            if t <= 0:
                return math.inf
            load += r / t
    return load


@dataclass(frozen=True)
class FleetInstance:
    """What the planner and reconciler need to know of one live instance."""

    id: str
    name: str
    service: str
    offering: Offering
    state: str
    launched_at: datetime | None = None
    ready_at: datetime | None = None
    drain_until: datetime | None = None
    state_since: datetime | None = None  # when it entered `state`
    last_reason: str | None = None  # why it did
    endpoint: str | None = None  # base URL of its server once it runs


@dataclass(frozen=True)
class Route:
    """Share of a service's requests of one input bucket that a pool should get.

    `output_bucket` is None for routable plans (a router only knows the input length);
    Mélange-style (input, output) plans set it.
    """

    service: str
    input_bucket: int
    pool: str
    weight: float
    output_bucket: int | None = None


@dataclass(frozen=True)
class Plan:
    """The target fleet and routing table a tick wants; pure output of `plan`."""

    targets: dict[tuple[str, str], int]  # (service, offering key) -> instance count
    offerings: dict[str, Offering]  # offering key -> offering used
    routes: tuple[Route, ...]
    cost_per_hour: float
    status: str  # optimal / heuristic / infeasible / kept_current / ...
    solver: str = "greedy"
    solve_seconds: float = 0.0
    gap: float | None = None
    utilization: dict[str, float] = field(default_factory=dict)  # (service/pool) -> expected load/capacity
    binding: tuple[str, ...] = ()  # names of limits that bound the plan (budget, quota...)
    unserved_rps: dict[str, float] = field(default_factory=dict)  # service -> demand left unserved
    notes: tuple[str, ...] = ()
    objective: float | None = None  # solver objective ($/h incl. change and risk costs, penalties)

    @property
    def acceptable(self) -> bool:
        """Whether a caller may act on the targets (otherwise it keeps the current fleet)."""
        return self.status in ("optimal", "feasible", "heuristic", "reused")

    def target_for(self, service: str) -> dict[str, int]:
        return {k: n for (s, k), n in self.targets.items() if s == service and n > 0}
