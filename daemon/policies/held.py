"""Baselines that size once and hold: `static` (one GPU type) and `melange` (the ILP once).

- static: the best single GPU type on on-demand instances, as many as the peak
  needs: ceil(peak_rps / target_qps_per_replica) (daemon/policies/workload.py:
  MaxTput at the workload's mix x the planner's utilization target), held for
  the whole replay. What a platform team provisions when it does not autoscale.
- melange: Mélange's answer (Griggs et al., arXiv 2404.14527: the cheapest
  heterogeneous GPU allocation for a rate and a size mix) solved once, at the
  peak rate and the overall mix, on on-demand offerings, and held. It is solved
  by this project's ILP (daemon/plan/ilp.py) with Mélange's assumptions: no
  spot, no zone-loss coverage, no fleet to keep, routing by input bucket (what a
  gateway can do; daemon/plan/melange.py shows the ILP is Mélange's model) and
  the planner's headroom, so it is sized exactly as `static` is.

Held means the count per offering stays fixed; an instance lost (a launch that
failed, a machine that broke) is replaced on the next tick. `static` replaces it
on the cheapest on-demand offering of its type outside the loop's launch
back-off, `melange` on the same offering.
"""

from __future__ import annotations

from daemon.domain import Market, Plan
from daemon.policies.base import (
    PolicyDecision, PolicyView, Targets, make_plan, one_pool_routes, replicas_for, sized_forecast,
)
from daemon.policies.workload import ServiceWorkload


class StaticPolicy:
    def __init__(self, cfg, gpu: dict[str, str], qps_target: dict[str, float],
                 workloads: dict[str, ServiceWorkload], name: str = "static"):
        self.name = name
        self.gpu = dict(gpu)
        self.count = {s.name: replicas_for(workloads[s.name].peak_rps, qps_target[s.name], s.min_replicas)
                      for s in cfg.services}
        self.qps_target = dict(qps_target)
        self.workloads = workloads

    def decide(self, view: PolicyView) -> PolicyDecision:
        grid = view.cfg.buckets.grid()
        parts, forecasts = [], {}
        for svc in view.cfg.services:
            name = svc.name
            offers = [o for o in view.offerings if o.gpu == self.gpu[name] and o.market is Market.ON_DEMAND]
            n = self.count[name]
            t = Targets.scaled_to(name, view.live(name), n, offers, view.unavailable, view.now)
            pool = offers[0].pool if offers else f"{self.gpu[name]}x1"
            parts.append((t, one_pool_routes(name, pool, grid.n_input)))
            wl = self.workloads[name]
            forecasts[name] = sized_forecast(name, view.now, wl.peak_rps, wl.mix, self.name, replicas=n,
                                             gpu=self.gpu[name], qps_target_per_replica=round(self.qps_target[name], 4))
        return PolicyDecision(make_plan(self.name, parts), forecasts)


class MelangePolicy:
    """Holds one plan of the ILP, made at the first decision for the peak rate and overall mix."""

    def __init__(self, cfg, workloads: dict[str, ServiceWorkload], name: str = "melange"):
        self.name = name
        self.cfg = cfg
        self.workloads = workloads
        self.plan: Plan | None = None

    def _solve(self, view: PolicyView) -> Plan:
        from daemon.plan.ilp import plan_ilp
        from daemon.plan.inputs import PlanInputs, ServiceDemand

        cfg = self.cfg
        pol = cfg.policy.model_copy(update={"spot": False, "spot_loss_coverage": 0.0, "min_on_demand_share": 0.0,
                                            "budget_per_hour": None})
        demands = tuple(
            ServiceDemand(s.name, sized_forecast(s.name, view.now, self.workloads[s.name].peak_rps,
                                                 self.workloads[s.name].mix, self.name),
                          s.min_replicas, tuple(s.gpus))
            for s in cfg.services)
        offers = tuple(o for o in view.offerings if o.market is Market.ON_DEMAND)
        inputs = PlanInputs(now=view.now, grid=cfg.buckets.grid(), demands=demands, capacity=view.capacity,
                            offerings=offers, fleet=(), policy=pol, lead_time_s=cfg.loop.lead_time_s,
                            quotas=tuple(cfg.quotas))
        # One solve, no fleet to keep: change costs do not matter; solve to optimality.
        solver = cfg.solver.model_copy(update={"launch_penalty_usd": 0.0, "disruption_usd": 0.0, "gap": 0.0,
                                               "time_limit_s": max(cfg.solver.time_limit_s, 60.0)})
        return plan_ilp(inputs, solver)

    def decide(self, view: PolicyView) -> PolicyDecision:
        if self.plan is None:
            self.plan = self._solve(view)
        p = self.plan
        parts = []
        for svc in view.cfg.services:
            # The plan's counts per offering, every tick: the reconciler replaces what was lost.
            t = Targets(svc.name)
            for (s, k), n in p.targets.items():
                if s == svc.name and n > 0:
                    t.add(p.offerings[k], n)
            parts.append((t, tuple(r for r in p.routes if r.service == svc.name)))
        forecasts = {s.name: sized_forecast(s.name, view.now, self.workloads[s.name].peak_rps,
                                            self.workloads[s.name].mix, self.name, plan_status=p.status,
                                            planned_cost_per_hour=round(p.cost_per_hour, 4))
                     for s in view.cfg.services}
        plan = make_plan(self.name, parts, notes=(f"Mélange plan held ({p.status}, {p.cost_per_hour:.2f} $/h)",),
                         utilization=p.utilization, unserved=p.unserved_rps)
        return PolicyDecision(plan, forecasts)

