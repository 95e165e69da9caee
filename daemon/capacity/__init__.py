"""Capacity: MaxTput per replica for each (service, GPU pool, size bucket).

The one interface through which the planner and the simulator read capacities.
"""

from __future__ import annotations

from daemon.config import Config
from daemon.domain import CapacityTable


def capacity_table(cfg: Config) -> CapacityTable:
    """Capacity for every configured service from the [[capacity]] tables of its model.

    A GPU type a service allows but no table covers is left out (and so never
    planned); the caller logs it.
    """
    table = {}
    provenance = {}
    for svc in cfg.services:
        for entry in cfg.capacity:
            if entry.model != svc.model or entry.gpu not in svc.gpus:
                continue
            pool = f"{entry.gpu}x{entry.gpu_count}"
            table[(svc.name, pool)] = tuple(tuple(float(x) for x in row) for row in entry.tputs)
            provenance[(svc.name, pool)] = entry.source
    return CapacityTable(table, provenance)
