"""Services that can get no capacity at all: no offering of an allowed GPU type has a capacity table.

The planner then returns an "optimal" plan of 0 instances at $0 for the service
and reports `min_replicas` as binding, which reads like a policy choice when it
is an outage of supply. The tick alerts these services critically every tick
instead (preflight refuses them at start; a catalog change or a cloud filter can
still take a service's last offering away at run time).
"""

from __future__ import annotations

from daemon.config import Config
from daemon.domain import CapacityTable


def _pool_gpu(pool: str) -> str:
    return pool.rsplit("x", 1)[0]  # Offering.pool is f"{gpu}x{gpu_count}"


def serves(matrix) -> bool:
    return any(v > 0 for row in (matrix or ()) for v in row)


def services_without_capacity(cfg: Config, capacity: CapacityTable, offerings, fleet=()) -> dict[str, str]:
    """service -> why it has no capacity (pure). `fleet`: live instances, whose offerings still serve."""
    pools = {o.pool for o in offerings}
    out = {}
    for svc in cfg.services:
        have = {o.pool for o in offerings if o.gpu in svc.gpus}
        have |= {f.offering.pool for f in fleet if f.service == svc.name}
        # A pool whose every bucket is 0 serves nothing within the SLO (an SLO tighter than any GPU).
        cap = {p for p in capacity.pools(svc.name) if _pool_gpu(p) in svc.gpus and serves(capacity.get(svc.name, p))}
        if have & cap:
            continue
        if not cap:
            why = (f"no capacity table, profile or estimate for any of its GPU types ({', '.join(svc.gpus)}) that "
                   "serves a request within its SLO")
        elif not have:
            why = (f"no offering of its GPU types ({', '.join(svc.gpus)}) in the provider's catalog "
                   f"({len(offerings)} offerings, {len({o.gpu for o in offerings})} GPU types)")
        else:
            why = f"capacity for {', '.join(sorted(cap))} but offerings only of {', '.join(sorted(have & pools or have))}"
        out[svc.name] = why
    return out
