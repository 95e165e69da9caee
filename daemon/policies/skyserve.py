"""SkyServe's autoscalers as baselines: `reactive` and `spothedge`, on one GPU type.

Read from the installed SkyPilot 0.14.1 and written anew (no code copied):
- sky/serve/autoscalers.py: `_AutoscalerWithHysteresis`, `RequestRateAutoscaler`,
  `FallbackRequestRateAutoscaler`, `_select_nonterminal_replicas_to_scale_down`;
- sky/serve/spot_placer.py: `DynamicFallbackSpotPlacer` (SpotHedge's placement);
- sky/serve/replica_managers.py: when the placer hears of a preemption
  (`_handle_preemption`), a failed launch and a successful one (`_refresh_thread_pool`);
- sky/serve/constants.py: AUTOSCALER_QPS_WINDOW_SIZE_SECONDS = 60,
  AUTOSCALER_DEFAULT_UPSCALE_DELAY_SECONDS = 300, AUTOSCALER_DEFAULT_DOWNSCALE_DELAY_SECONDS = 1200,
  AUTOSCALER_DEFAULT_DECISION_INTERVAL_SECONDS = 20.

RequestRateAutoscaler: every decision interval, qps = requests in the last 60 s / 60;
raw target = ceil(qps / target_qps_per_replica), clipped to [min, max] replicas. The
target moves up only after the raw target stayed above it for upscale_delay /
interval consecutive decisions (300 s), down only after 1200 s below; a raw target
equal to the current one resets both counters. SkyServe decides every 20 s, our
loop every tick (loop.tick_interval_s, 60 s by default): the counters count ticks,
int(delay / tick) of them, so the delays in seconds are the same.

FallbackRequestRateAutoscaler (SpotHedge, use_ondemand_fallback): spot replicas are
kept at target + num_overprovision (1 here, as the issue asks; SpotHedge's
"over-provisioning"), on-demand at base_ondemand_fallback_replicas (0) plus, with
dynamic_ondemand_fallback, one for every spot replica wanted but not READY, at
most target (never for the over-provisioned one).

DynamicFallbackSpotPlacer: every location (cloud/region/zone) that sells the GPU
type as spot starts ACTIVE. A new spot replica goes to the cheapest ACTIVE
location no spot replica of the service is in, else the cheapest ACTIVE one. A
preemption or a failed spot launch marks its location PREEMPTED, a launch that
succeeded marks it ACTIVE again; when fewer than two locations are ACTIVE all
are reset to ACTIVE. (SkyServe marks "success" when sky.launch returns, i.e. the
cluster is up; the loop learns it when the replica is healthy: `became_ready`.)

What differs from a SkyServe deployment, on purpose, to keep inputs identical:
on-demand replicas go to the cheapest on-demand offering of the type not in the
loop's launch back-off (SkyServe retries until up through its optimizer's
failover); max_replicas is unbounded; and at the first decision of a replay the
target is set to the raw target, as a deployment that has been running would
have it (the replay's warm start), instead of min_replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from daemon.domain import Market, Offering
from daemon.lifecycle import Reason, State
from daemon.policies.base import (
    FAILED_LAUNCH, PolicyDecision, PolicyView, Targets, cheapest, latest_mix, make_plan, one_pool_routes,
    recent_rate, scale_down_order, sized_forecast,
)

QPS_WINDOW_S = 60.0  # sky/serve/constants.py AUTOSCALER_QPS_WINDOW_SIZE_SECONDS
UPSCALE_DELAY_S = 300.0  # AUTOSCALER_DEFAULT_UPSCALE_DELAY_SECONDS
DOWNSCALE_DELAY_S = 1200.0  # AUTOSCALER_DEFAULT_DOWNSCALE_DELAY_SECONDS
NUM_OVERPROVISION = 1  # SpotHedge's over-provisioning (the issue: num_overprovision = 1)
BASE_ONDEMAND_FALLBACK = 0  # spec.base_ondemand_fallback_replicas default
MAX_REPLICAS = 10**6  # SkyServe needs a max to autoscale; unbounded here


@dataclass
class Hysteresis:
    """`_AutoscalerWithHysteresis._set_target_num_replicas_with_hysteresis`, counting ticks."""

    up_threshold: int
    down_threshold: int
    target: int | None = None
    up: int = 0
    down: int = 0

    @classmethod
    def for_tick(cls, tick_s: float) -> "Hysteresis":
        return cls(int(UPSCALE_DELAY_S / tick_s), int(DOWNSCALE_DELAY_S / tick_s))

    def update(self, raw: int) -> int:
        if self.target is None or self.target == 0:  # warm start / "faster scale up when there is no replica"
            self.target = raw
        elif raw > self.target:
            self.up += 1
            self.down = 0
            if self.up >= self.up_threshold:
                self.up = 0
                self.target = raw
        elif raw < self.target:
            self.down += 1
            self.up = 0
            if self.down >= self.down_threshold:
                self.down = 0
                self.target = raw
        else:
            self.up = self.down = 0
        return self.target


@dataclass
class SpotPlacer:
    """`DynamicFallbackSpotPlacer`: location -> ACTIVE (True) or PREEMPTED (False)."""

    offers: dict[str, Offering]  # location -> the cheapest spot offering of the type there
    active: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.active = {loc: True for loc in self.offers}

    def set_active(self, location: str) -> None:
        if location in self.active:
            self.active[location] = True

    def set_preempted(self, location: str) -> None:
        if location not in self.active:
            return
        self.active[location] = False
        if sum(self.active.values()) < 2:  # "Prevent the case with only one active location."
            for loc in self.active:
                self.active[loc] = True

    def select(self, current: list[str]) -> Offering | None:
        active = [loc for loc, ok in self.active.items() if ok]
        if not active:
            return None
        fresh = [loc for loc in active if loc not in current]
        candidates = fresh or active
        loc = min(candidates, key=lambda x: (self.offers[x].price_per_hour, x))
        return self.offers[loc]


def _type_offers(view: PolicyView, gpu: str, market: Market) -> list[Offering]:
    return [o for o in view.offerings if o.gpu == gpu and o.market is market]


def _pool_of(offers: list[Offering], gpu: str) -> str:
    return offers[0].pool if offers else f"{gpu}x1"


class _SkyServeBase:
    """Per service: one GPU type, a QPS target per replica, the hysteresis state."""

    def __init__(self, name: str, cfg, gpu: dict[str, str], qps_target: dict[str, float]):
        self.name = name
        self.gpu = dict(gpu)
        self.qps_target = dict(qps_target)
        self.min_replicas = {s.name: s.min_replicas for s in cfg.services}
        self.hyst = {s.name: Hysteresis.for_tick(cfg.loop.tick_interval_s) for s in cfg.services}

    def _target(self, view: PolicyView, svc: str) -> tuple[int, float]:
        qps = recent_rate(view.history.get(svc, []), view.now, QPS_WINDOW_S)
        q = self.qps_target[svc]
        raw = math.ceil(qps / q) if q > 0 else self.min_replicas[svc]
        raw = max(self.min_replicas[svc], min(MAX_REPLICAS, raw))
        return self.hyst[svc].update(raw), qps

    def _forecast(self, view: PolicyView, svc: str, qps: float, target: int, **details):
        grid = view.cfg.buckets.grid()
        empty = tuple(tuple(0.0 for _ in range(grid.n_output)) for _ in range(grid.n_input))
        mix = latest_mix(view.history.get(svc, []), empty)
        return sized_forecast(svc, view.now, qps, mix, self.name, target_replicas=target, gpu=self.gpu[svc],
                              qps_target_per_replica=round(self.qps_target[svc], 4), **details)


class ReactivePolicy(_SkyServeBase):
    """`RequestRateAutoscaler` on one GPU type, on-demand only."""

    def __init__(self, cfg, gpu: dict[str, str], qps_target: dict[str, float], name: str = "reactive"):
        super().__init__(name, cfg, gpu, qps_target)

    def decide(self, view: PolicyView) -> PolicyDecision:
        parts, forecasts = [], {}
        grid = view.cfg.buckets.grid()
        for svc in view.cfg.services:
            name = svc.name
            target, qps = self._target(view, name)
            offers = _type_offers(view, self.gpu[name], Market.ON_DEMAND)
            t = Targets.scaled_to(name, view.live(name), target, offers, view.unavailable, view.now)
            parts.append((t, one_pool_routes(name, _pool_of(offers, self.gpu[name]), grid.n_input)))
            forecasts[name] = self._forecast(view, name, qps, target)
        return PolicyDecision(make_plan(self.name, parts), forecasts)


class SpotHedgePolicy(_SkyServeBase):
    """`FallbackRequestRateAutoscaler` (num_overprovision 1, dynamic on-demand fallback) with
    `DynamicFallbackSpotPlacer`, on one GPU type."""

    def __init__(self, cfg, gpu: dict[str, str], qps_target: dict[str, float], name: str = "spothedge",
                 num_overprovision: int = NUM_OVERPROVISION):
        super().__init__(name, cfg, gpu, qps_target)
        self.num_overprovision = num_overprovision
        self.placers: dict[str, SpotPlacer] = {}

    def _placer(self, view: PolicyView, svc: str) -> SpotPlacer:
        if svc not in self.placers:
            by_loc: dict[str, Offering] = {}
            for o in sorted(_type_offers(view, self.gpu[svc], Market.SPOT), key=lambda o: (o.price_per_hour, o.key)):
                by_loc.setdefault(o.location, o)
            self.placers[svc] = SpotPlacer(by_loc)
        return self.placers[svc]

    def decide(self, view: PolicyView) -> PolicyDecision:
        parts, forecasts = [], {}
        grid = view.cfg.buckets.grid()
        for svc in view.cfg.services:
            name = svc.name
            placer = self._placer(view, name)
            for e in view.events:  # the replica manager's calls into the placer, in time order
                if e.service != name or e.market is not Market.SPOT:
                    continue
                if e.reason is Reason.PREEMPTED or e.reason in FAILED_LAUNCH:
                    placer.set_preempted(e.location)
                elif e.reason is Reason.BECAME_READY:
                    placer.set_active(e.location)
            target, qps = self._target(view, name)
            live = view.live(name)
            spot = [i for i in live if i.offering.market is Market.SPOT]
            ondemand = [i for i in live if i.offering.market is Market.ON_DEMAND]
            ready_spot = sum(1 for i in spot if State(i.state) is State.RUNNING)
            t = Targets.keep(name, live)
            spot_want = target + self.num_overprovision - BASE_ONDEMAND_FALLBACK
            if len(spot) < spot_want:
                current = [i.offering.location for i in spot]
                for _ in range(spot_want - len(spot)):
                    off = placer.select(current)
                    if off is None:
                        break
                    t.add(off)
                    current.append(off.location)
            elif len(spot) > spot_want:
                t.remove(scale_down_order(spot, view.now)[: len(spot) - spot_want])
            od_want = BASE_ONDEMAND_FALLBACK + max(0, spot_want - ready_spot)  # dynamic_ondemand_fallback
            od_want = min(od_want, target)  # no fallback for the over-provisioned replica
            if od_want > len(ondemand):
                off = cheapest(_type_offers(view, self.gpu[name], Market.ON_DEMAND), view.unavailable)
                if off is not None:
                    t.add(off, od_want - len(ondemand))
            elif od_want < len(ondemand):
                t.remove(scale_down_order(ondemand, view.now)[: len(ondemand) - od_want])
            pool = _pool_of(_type_offers(view, self.gpu[name], Market.ON_DEMAND)
                            or _type_offers(view, self.gpu[name], Market.SPOT), self.gpu[name])
            parts.append((t, one_pool_routes(name, pool, grid.n_input)))
            forecasts[name] = self._forecast(view, name, qps, target, spot_wanted=spot_want, ondemand_wanted=od_want,
                                             active_locations=sum(placer.active.values()))
        return PolicyDecision(make_plan(self.name, parts), forecasts)
