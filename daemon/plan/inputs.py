"""What the planner sees: a typed snapshot of demand, capacity, offerings, fleet and policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from daemon.config import PolicyConfig, QuotaConfig
from daemon.domain import BucketGrid, CapacityTable, DemandForecast, FleetInstance, Offering


@dataclass(frozen=True)
class ServiceDemand:
    service: str
    forecast: DemandForecast
    min_replicas: int
    allowed_gpus: tuple[str, ...]
    # Highest planning-quantile rate the forecast expects within policy.scale_down_delay_s after
    # the horizon (None: no dip known). The planner keeps capacity a returning peak will need
    # when tearing it down and relaunching costs more than running it through the dip.
    lookahead_rate_rps: float | None = None
    # Bursts inside a window, as a multiple of its mean rate the fleet must carry (>= 1;
    # DemandForecast.details["burst_factor"]). The plan carries the forecast rate times the
    # larger of this and 1 + policy.headroom.
    burst_factor: float = 1.0

    def planning_factor(self, headroom: float) -> float:
        return max(1.0 + headroom, self.burst_factor)


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
    tick_interval_s: float = 60.0  # how long a loss may go unseen (spot-loss risk: the gap until replaced)
    quotas: tuple[QuotaConfig, ...] = ()  # per offering / region / cloud caps (Config.quotas)
