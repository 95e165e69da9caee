"""A simple, fast planner: one GPU pool per service, spot spread over zones.

For each service it sizes every allowed pool for the forecast (Mélange's load,
BACKGROUND §1), keeps the pool of least cost, spreads spot replicas one per
location from the cheapest (SkyServe's SpotHedge placement, §3), prefers
locations the fleet already uses (no churn for a few cents), and adds
on-demand replicas until losing the worst location still leaves
`spot_loss_coverage` of the need. The integer program (daemon/plan/ilp.py)
plans several pools jointly; this one is the fallback and the baseline.
"""

from __future__ import annotations

import math
from collections import Counter

from daemon.domain import Market, Offering, Plan, Route, load_per_replica
from daemon.plan.inputs import PlanInputs, ServiceDemand

SWITCH_MARGIN = 0.10  # a new pool must be 10% cheaper than the one in use


def _candidates(inputs: PlanInputs, demand: ServiceDemand) -> dict[str, list[Offering]]:
    pools: dict[str, list[Offering]] = {}
    for off in inputs.offerings:
        if off.gpu not in demand.allowed_gpus or off.key in inputs.unavailable:
            continue
        if off.market is Market.SPOT and not inputs.policy.spot:
            continue
        if inputs.capacity.get(demand.service, off.pool) is None:
            continue
        pools.setdefault(off.pool, []).append(off)
    return pools


def _place(n: int, offers: list[Offering], current: Counter, coverage: float, spot_ok: bool) -> Counter:
    """Counts per offering key for n replicas of one pool."""
    od = sorted((o for o in offers if o.market is Market.ON_DEMAND),
                key=lambda o: (-current[o.key], o.price_per_hour, o.key))
    spot = sorted((o for o in offers if o.market is Market.SPOT),
                  key=lambda o: (-current[o.key], o.price_per_hour, o.key)) if spot_ok else []
    # One spot replica per location, cheapest first (kept ones first).
    by_loc: dict[str, Offering] = {}
    for o in spot:
        by_loc.setdefault(o.location, o)
    spot_locs = list(by_loc.values())
    out: Counter = Counter()
    if spot_locs:
        for k in range(n):
            out[spot_locs[k % len(spot_locs)].key] += 1
    if od:
        if not spot_locs:
            out[od[0].key] += n
        else:
            # Losing the location with most spot replicas must leave coverage x n.
            def worst_loss() -> int:
                return max((c for key, c in out.items() if key.endswith("/spot")), default=0)

            while n - worst_loss() + sum(c for key, c in out.items() if key.endswith("/on-demand")) < math.ceil(coverage * n):
                # Replace one spot replica of the worst location by an on-demand one.
                worst = max((key for key in out if key.endswith("/spot")), key=lambda k: (out[k], k))
                out[worst] -= 1
                if out[worst] == 0:
                    del out[worst]
                out[od[0].key] += 1
    return out


def plan_greedy(inputs: PlanInputs) -> Plan:
    pol = inputs.policy
    targets: dict[tuple[str, str], int] = {}
    used: dict[str, Offering] = {}
    routes: list[Route] = []
    util: dict[str, float] = {}
    unserved: dict[str, float] = {}
    notes: list[str] = []
    binding: list[str] = []
    cost = 0.0
    current = Counter(i.offering.key for i in inputs.fleet)
    for demand in inputs.demands:
        rates = tuple(tuple(r * demand.planning_factor(pol.headroom) for r in row) for row in demand.forecast.cell_rates())
        pools = _candidates(inputs, demand)
        best = None
        for pool, offers in sorted(pools.items()):
            tput = inputs.capacity.get(demand.service, pool)
            load = load_per_replica(rates, tput)
            if math.isinf(load):
                continue
            n = max(demand.min_replicas, math.ceil(load - 1e-9))
            counts = _place(n, offers, current, pol.spot_loss_coverage, pol.spot)
            offer_by_key = {o.key: o for o in offers}
            c = sum(offer_by_key[k].price_per_hour * v for k, v in counts.items())
            # Hysteresis against flapping between pools of near-equal cost: a pool the
            # service does not use yet must beat the incumbent by SWITCH_MARGIN.
            incumbent = any(current[o.key] for o in offers)
            score = c if incumbent else c * (1 + SWITCH_MARGIN)
            if best is None or score < best[0] - 1e-9:
                best = (score, pool, counts, offer_by_key, load, n, c)
        if best is None:
            notes.append(f"{demand.service}: no allowed GPU pool can serve the forecast mix")
            unserved[demand.service] = demand.forecast.rate_rps
            continue
        _, pool, counts, offer_by_key, load, n, c = best
        for k, v in counts.items():
            if v > 0:
                targets[(demand.service, k)] = v
                used[k] = offer_by_key[k]
        cost += c
        util[f"{demand.service}/{pool}"] = load / n if n else 0.0
        for i in range(inputs.grid.n_input):
            routes.append(Route(demand.service, i, pool, 1.0))
    if pol.budget_per_hour is not None and cost > pol.budget_per_hour + 1e-9:
        binding.append("budget")
        targets, cost = _fit_budget(targets, used, pol.budget_per_hour)
        notes.append(f"budget {pol.budget_per_hour:.2f} $/h binds: planned fleet cut to {cost:.2f} $/h")
    return Plan(
        targets=targets, offerings=used, routes=tuple(routes), cost_per_hour=cost,
        status="heuristic", solver="greedy", utilization=util, binding=tuple(binding),
        unserved_rps=unserved, notes=tuple(notes),
    )


def _fit_budget(targets, used, budget):
    """Drop the most expensive replicas until the plan fits the budget (serve as much as possible)."""
    t = dict(targets)
    cost = sum(used[k].price_per_hour * n for (_, k), n in t.items())
    while cost > budget + 1e-9 and t:
        key = max(t, key=lambda sk: (used[sk[1]].price_per_hour, sk))
        t[key] -= 1
        cost -= used[key[1]].price_per_hour
        if t[key] == 0:
            del t[key]
    return t, cost
