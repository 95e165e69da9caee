"""Routing classes: what a router can tell requests apart by, and what each costs a pool.

A router sees a request's input length, never its output length. So the default
routing class is an input bucket i, and the load one req/s of class i puts on a
pool p is the mix-weighted mean over the output buckets observed for that input
bucket (Mélange §5 estimates a request's output from the input it came with;
BACKGROUND §1 "known weaknesses"):

    load[i, p] = sum_j (pi[i, j] / pi[i]) / T[p, i, j]           (replicas per req/s)

where pi is the forecast's (input x output) share matrix and T the MaxTput
table. A pool that cannot serve some output bucket the input bucket carries
(T = 0 there) cannot take the class at all. Mélange-style routing by (input,
output) cell keeps one class per cell with load 1 / T[p, i, j]; it is cheaper
on paper and not routable, which is why it is only an option.

This module also writes the routing table as JSON for a gateway.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from daemon.domain import BucketGrid, Matrix, Plan
from daemon.files import write_atomic


@dataclass(frozen=True)
class RouteClass:
    """One routable class of a service's requests with its forecast rate and per-pool load."""

    input_bucket: int
    output_bucket: int | None  # None: the whole input bucket (routable)
    rate: float  # req/s the plan must carry (headroom included)
    load: dict[str, float]  # pool -> replicas per req/s; pools absent cannot serve the class

    @property
    def label(self) -> str:
        if self.output_bucket is None:
            return f"in{self.input_bucket}"
        return f"in{self.input_bucket}out{self.output_bucket}"


def route_classes(
    mix: Matrix,
    rate: float,
    tputs: dict[str, Matrix],
    routing: str = "input",
) -> list[RouteClass]:
    """Classes with positive demand for one service.

    `mix` sums to 1 (the forecast's share matrix), `rate` already includes
    headroom, `tputs` maps pool -> MaxTput matrix of the service's grid.
    """
    if routing not in ("input", "cell"):
        raise ValueError(f"routing must be 'input' or 'cell', got {routing!r}")
    out: list[RouteClass] = []
    for i, row in enumerate(mix):
        row_share = sum(row)
        if row_share <= 0 or rate <= 0:
            continue
        if routing == "cell":
            for j, share in enumerate(row):
                if share <= 0:
                    continue
                load = {}
                for pool, t in tputs.items():
                    tij = t[i][j]
                    if tij > 0:
                        load[pool] = 1.0 / tij
                out.append(RouteClass(i, j, rate * share, load))
            continue
        load = {}
        for pool, t in tputs.items():
            acc = 0.0
            for j, share in enumerate(row):
                if share <= 0:
                    continue
                tij = t[i][j]
                if tij <= 0:
                    acc = math.inf
                    break
                acc += (share / row_share) / tij
            if math.isfinite(acc):
                load[pool] = acc
        out.append(RouteClass(i, None, rate * row_share, load))
    return out


def routing_table_json(plan: Plan, grids: dict[str, BucketGrid] | BucketGrid) -> dict:
    """The routing table as a gateway consumes it.

    Shape: {"version": 1, "status": ..., "services": {svc: {"input_edges": [...],
    "routes": [{"input_bucket": i, "input_tokens": [lo, hi or null],
    "pools": {pool: weight}}]}}}. Weights of one input bucket sum to 1. For
    Mélange-style plans the output bucket is added to each entry.
    """
    services: dict[str, dict] = {}
    for route in plan.routes:
        grid = grids if isinstance(grids, BucketGrid) else grids[route.service]
        svc = services.setdefault(route.service, {"input_edges": list(grid.input_edges), "routes": {}})
        key = (route.input_bucket, route.output_bucket)
        entry = svc["routes"].get(key)
        if entry is None:
            i = route.input_bucket
            hi = grid.input_edges[i + 1] if i + 1 < grid.n_input else None
            entry = {"input_bucket": i, "input_tokens": [grid.input_edges[i], hi], "pools": {}}
            if route.output_bucket is not None:
                entry["output_bucket"] = route.output_bucket
            svc["routes"][key] = entry
        entry["pools"][route.pool] = round(route.weight, 6)
    for svc in services.values():
        svc["routes"] = [svc["routes"][k] for k in sorted(svc["routes"], key=lambda k: (k[0], k[1] or 0))]
    return {"version": 1, "status": plan.status, "services": services}


def write_routing_table(plan: Plan, grids: dict[str, BucketGrid] | BucketGrid, path: str | Path) -> Path:
    """Write the routing table atomically (temp file + rename) so a gateway never reads half a file."""
    data = json.dumps(routing_table_json(plan, grids), indent=2, sort_keys=True)
    return write_atomic(path, data + "\n")
