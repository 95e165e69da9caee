"""The policy seam: what a baseline replaces in the tick, and what it sees.

A tick is observe -> liveness -> decide -> reconcile -> record -> apply -> finish
(daemon/loop/tick.py). This project decides with its forecast and planner; a
baseline policy decides instead, and everything around it stays the same code:
the store, the simulated cloud, liveness (launch timeouts, back-offs), the
reconciler (make before break, drains, disruption budgets, the dollar cap), the
records the judge reads. So two policies differ only in what they asked for.

A policy sees a `PolicyView` (the demand history, the fleet, the offerings, the
lifecycle events since its last decision) and returns a `PolicyDecision`: a
`Plan` (the target fleet per offering and a routing table for it; single-pool
baselines route every request to their one pool) and the demand it sized for,
recorded in the decision as its "forecast".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Protocol

from daemon.config import Config
from daemon.domain import CapacityTable, DemandForecast, DemandWindow, FleetInstance, Market, Offering, Plan, Route
from daemon.lifecycle import LIVE, Reason, State

# Lifecycle events a policy is told about: what SkyServe's replica manager reacts to.
EVENT_REASONS = frozenset({Reason.PREEMPTED, Reason.LAUNCH_FAILED, Reason.NO_CAPACITY, Reason.QUOTA,
                           Reason.LAUNCH_TIMEOUT, Reason.BECAME_READY})
FAILED_LAUNCH = frozenset({Reason.LAUNCH_FAILED, Reason.NO_CAPACITY, Reason.QUOTA, Reason.LAUNCH_TIMEOUT})


@dataclass(frozen=True)
class FleetEvent:
    at: datetime
    reason: Reason
    instance_id: str
    service: str
    location: str  # cloud/region/zone (zone "-" where the cloud has none)
    market: Market
    offering_key: str


@dataclass(frozen=True)
class PolicyView:
    cfg: Config
    now: datetime
    history: dict[str, list[DemandWindow]]  # per service, oldest first, as the loop keeps it
    fleet: tuple[FleetInstance, ...]  # every non-terminal instance, less launches liveness just timed out
    offerings: tuple[Offering, ...]
    unavailable: frozenset[str]  # the loop's market cooldowns and back-offs (a policy may ignore them)
    events: tuple[FleetEvent, ...]  # since the previous decision, in time order
    capacity: CapacityTable

    def live(self, service: str) -> list[FleetInstance]:
        """Requested, provisioning or running instances of a service (SkyServe's "nonterminal")."""
        return [i for i in self.fleet if i.service == service and State(i.state) in LIVE]


@dataclass(frozen=True)
class PolicyDecision:
    plan: Plan
    forecasts: dict[str, DemandForecast]


class Policy(Protocol):
    name: str

    def decide(self, view: PolicyView) -> PolicyDecision: ...


# -- helpers the baselines share -------------------------------------------------------------

def recent_rate(history: list[DemandWindow], now: datetime, window_s: float) -> float:
    """Requests per second over the last `window_s` of observed demand (SkyServe: the request
    timestamps in its QPS window), i.e. the windows that start at most `window_s` before the
    end of the latest one, none of them after `now`."""
    if window_s <= 0:
        return 0.0
    since = None
    n = 0.0
    for w in reversed(history):
        w_end = w.start + timedelta(seconds=w.seconds)
        if w_end > now:
            continue
        if since is None:
            since = w_end - timedelta(seconds=window_s)
        if w.start < since:
            break
        n += w.requests
    return n / window_s


def latest_mix(history: list[DemandWindow], fallback) -> tuple:
    for w in reversed(history):
        m = w.mix()
        if m is not None:
            return m
    return fallback


def qps_at_mix(tput, mix) -> float:
    """Requests/s one replica carries at this size mix (Mélange's load, inverted): 1 / sum(mix / MaxTput).

    Cells the pool cannot serve within SLO (MaxTput 0) are left out and the rest
    renormalised: such a pool serves the rest of the mix at this rate.
    """
    share = inv = 0.0
    for mrow, trow in zip(mix, tput):
        for m, t in zip(mrow, trow):
            if m > 0 and t > 0:
                share += m
                inv += m / t
    return share / inv if inv > 0 else 0.0


def unservable_share(tput, mix) -> float:
    return sum(m for mrow, trow in zip(mix, tput) for m, t in zip(mrow, trow) if m > 0 and t <= 0)


def one_pool_routes(service: str, pool: str, n_input: int) -> tuple[Route, ...]:
    """A single-pool routing table: every input bucket to the one pool."""
    return tuple(Route(service, i, pool, 1.0) for i in range(n_input))


def cheapest(offers: Iterable[Offering], avoid: frozenset[str] = frozenset()) -> Offering | None:
    """The cheapest offering not in `avoid`; if all are, the cheapest of all (a launch must go somewhere)."""
    offers = sorted(offers, key=lambda o: (o.price_per_hour, o.key))
    for o in offers:
        if o.key not in avoid:
            return o
    return offers[0] if offers else None


_ORDER = {State.REQUESTED: 0, State.PROVISIONING: 1, State.RUNNING: 2}


def scale_down_order(insts: Iterable[FleetInstance], now: datetime) -> list[FleetInstance]:
    """Which replicas go first: the least advanced (requested, then provisioning, then running),
    newest first within a state (sky/serve/autoscalers.py `_select_nonterminal_replicas_to_scale_down`,
    SkyPilot 0.14.1: status in ReplicaStatus.scale_down_decision_order, then replica id descending).
    The reconciler removes in the same order within an offering."""
    return sorted(insts, key=lambda i: (_ORDER[State(i.state)], -(i.launched_at or now).timestamp(), i.id))


@dataclass
class Targets:
    """A target fleet built launch by launch and removal by removal, as SkyServe's decisions are."""

    service: str
    counts: Counter = field(default_factory=Counter)  # offering key -> instances wanted
    offerings: dict[str, Offering] = field(default_factory=dict)

    @classmethod
    def keep(cls, service: str, live: Iterable[FleetInstance]) -> "Targets":
        t = cls(service)
        for i in live:
            t.add(i.offering)
        return t

    @classmethod
    def scaled_to(cls, service: str, live: list[FleetInstance], n: int, offers: Iterable[Offering],
                  unavailable: frozenset[str], now: datetime) -> "Targets":
        """The live fleet brought to `n` instances: launches on the cheapest available offering,
        removals in scale-down order (one GPU type's fleet, as the single-type baselines run it)."""
        t = cls.keep(service, live)
        if len(live) < n:
            off = cheapest(offers, unavailable)
            if off is not None:
                t.add(off, n - len(live))
        elif len(live) > n:
            t.remove(scale_down_order(live, now)[: len(live) - n])
        return t

    def add(self, off: Offering, n: int = 1) -> None:
        self.counts[off.key] += n
        self.offerings.setdefault(off.key, off)

    def remove(self, insts: Iterable[FleetInstance]) -> None:
        for i in insts:
            self.counts[i.offering.key] -= 1

    def as_plan_parts(self) -> tuple[dict[tuple[str, str], int], dict[str, Offering], float]:
        targets = {(self.service, k): n for k, n in self.counts.items() if n > 0}
        used = {k: self.offerings[k] for _, k in targets}
        return targets, used, sum(used[k].price_per_hour * n for (_, k), n in targets.items())


def make_plan(name: str, parts: list[tuple[Targets, tuple[Route, ...]]], notes: tuple[str, ...] = (),
              utilization: dict[str, float] | None = None, unserved: dict[str, float] | None = None) -> Plan:
    targets: dict = {}
    used: dict = {}
    cost = 0.0
    routes: list[Route] = []
    for t, r in parts:
        tg, u, c = t.as_plan_parts()
        targets.update(tg)
        used.update(u)
        cost += c
        routes.extend(r)
    return Plan(targets=targets, offerings=used, routes=tuple(routes), cost_per_hour=cost, status="heuristic",
                solver=name, utilization=utilization or {}, unserved_rps=unserved or {}, notes=notes)


def sized_forecast(service: str, now: datetime, rate: float, mix, method: str, **details) -> DemandForecast:
    return DemandForecast(service, now, 0.0, float(rate), tuple(tuple(r) for r in mix), method, 0.5, dict(details))


def replicas_for(rate: float, qps_per_replica: float, minimum: int) -> int:
    if qps_per_replica <= 0:
        return minimum
    return max(minimum, int(math.ceil(rate / qps_per_replica - 1e-9)))

