"""What the planner sees: a typed snapshot of demand, capacity, offerings, fleet and policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from daemon.config import PolicyConfig
from daemon.domain import BucketGrid, CapacityTable, DemandForecast, FleetInstance, Offering


@dataclass(frozen=True)
class ServiceDemand:
    service: str
    forecast: DemandForecast
    min_replicas: int
    allowed_gpus: tuple[str, ...]


@dataclass(frozen=True)
class PlanInputs:
    now: datetime
    grid: BucketGrid
    demands: tuple[ServiceDemand, ...]
    capacity: CapacityTable
    offerings: tuple[Offering, ...]
    fleet: tuple[FleetInstance, ...]  # live instances (requested/provisioning/running), draining excluded
    policy: PolicyConfig
    unavailable: frozenset[str] = frozenset()  # offering keys in a cooldown (failed launch / preemption)
    preemptions_per_hour: dict[str, float] = field(default_factory=dict)  # location -> observed spot hazard
    lead_time_s: float = 300.0  # start-up time of a new instance (launch cost = lead time x price)
