r"""The planner: a mixed on-demand/spot, heterogeneous-GPU integer program.

`plan_ilp(inputs, solver_cfg) -> Plan` is pure: the same inputs give the same
plan (the only clock read measures the solve's own duration for the report).

Why not Mélange's formulation
-----------------------------
Mélange (arXiv 2404.14527, §5; BACKGROUND §1) cuts every (input, output) cell
into `slice_factor` identical slices and gives each slice a binary assignment
per GPU type. Identical slices make the model symmetric: branch and bound
explores equivalent assignments over and over (an 8x8 grid with slice factor 16
took ~24 s). Slices of one cell are interchangeable, so only *how many* slices
(or what share) of a class a pool gets matters: we keep integer instance counts
and give routing continuous shares (or, on request, integer slice counts, which
is exactly Mélange's feasible set without the symmetry, see melange.py).

Sets and data
-------------
s in S services;  o in O offerings (cloud, region, zone, type, market, price c_o);
p(o) its pool (GPU shape), L(o) its location (zone: spot losses are correlated
there, SkyServe §3), spot(o) whether it is spot.
k in K_s routing classes of s: input buckets (default; a router only knows the
input length) or (input, output) cells (Mélange-style). d_sk = rate_s x (1 +
headroom) x share_k is the req/s to carry; l_skp the replicas one req/s of k
needs on pool p (routing.py: the output-length distribution of the input bucket
weights 1/MaxTput). m_so: instances of s live on o now.

Variables
---------
n_so in Z>=0        instances of s on offering o (the targets)
r_skp >= 0          req/s of class k routed to pool p (or r = d_sk q_skp / S, q in Z, with a slice factor S)
u_sk >= 0           req/s left unserved (soft: the plan never becomes infeasible)
a_so, t_so >= 0     launches and terminations vs the current fleet (a_so = n_so where m_so = 0)
r^L_skp >= 0        routing after losing all spot in location L
z_so >= 0, r^P, u^P relaunches and routing at a forecast peak after a dip (lookahead)
e_s >= 0, x >= 0    min-replica shortfall, terminations beyond the per-tick limit

Constraints
-----------
demand        sum_p r_skp + u_sk = d_sk
capacity      sum_k l_skp r_skp <= sum_{o: p(o)=p} n_so
zone loss     for every location L with spot offerings of s:
              sum_p r^L_skp >= beta sum_p r_skp                     (beta = policy.spot_loss_coverage)
              sum_k l_skp r^L_skp <= sum_{p(o)=p} n_so - sum_{p(o)=p, spot(o), L(o)=L} n_so
              Added lazily: solve, add the scenarios of the locations the solution put
              spot in, re-solve until none is missing. The final model is a relaxation of
              the full one whose optimum is feasible for it, hence optimal for it.
risk          (solver.coverage = "risk") each scenario serves what it can, sum_p r^L_skp +
              u^L_sk >= sum_p r_skp, and the expected unserved share is budgeted:
              sum_L w_L sum_k u^L_sk <= epsilon sum_k d_sk, w_L = hazard_L x (tick + start-up)
              the share of time L is lost and not yet replaced, epsilon = policy.spot_risk_budget
              (beta, if > 0, still bounds any single loss). A chance constraint on the SLO
              instead of a fixed share: calm locations may carry much, stormy ones need spare.
on-demand     sum_{o on-demand} n_so >= alpha sum_o n_so            (alpha = policy.min_on_demand_share)
unavailable   n_so <= m_so where o is in a cooldown, spot is switched off, or o left the catalog
changes       a_so >= n_so - m_so,  t_so >= m_so - n_so
              sum a <= max_launches_per_tick;  sum t <= max_terminations_per_tick + x
budget        sum_so c_o n_so <= B  (hard: never exceeded; unmet demand goes to u)
              and sum c_o (n_so + z_so) <= B at the lookahead peak
quotas        for each quota q: sum_{s, o in q} w_q(o) n_so <= cap_q  (w = 1 or GPUs per instance)
min replicas  sum_o n_so + e_s >= min_replicas_s
peak          sum_p r^P_skp + u^P_sk = d^P_sk;  sum_k l_skp r^P_skp <= sum_{p(o)=p} (n_so + z_so)

Objective ($/h; one-off costs are spread over W = solver.amortize_h hours)
---------
  sum n_so c_o (1 + h_L(o) T)                      price + expected preemption cost
                                                   (hazard h per hour x replacement start-up T x price)
+ sum a_so (T c_o + launch_penalty) / W            launch: start-up time at its price + penalty
+ sum t_so (drain c_o + disruption) / W            removal: drain time at its price + disruption
+ sum z_so [c_o (1 + h T) (W - tau)/W + (T c_o + launch_penalty)/W]
                                                   a peak at tau = scale_down_delay that the plan
                                                   did not keep capacity for must be relaunched
+ P_u (sum u + (W - tau)/W sum u^P) + P_e sum e + P_x x

Keeping an instance through a dip that returns within tau saves its price for tau
only and costs a disruption and a relaunch, so small dips do not tear capacity down;
a lasting decrease saves the price for all of W and does. Steady demand never pays
change costs, so the current fleet stays put.

Model size and solve time
-------------------------
- Dominance: an offering with no instances of the service is dropped when another one
  of the same pool, market, quota set (and location, for spot) is open and no dearer
  (`_undominated`; exact). A 200-offering catalog shrinks to tens of variables.
- Spot candidates: only the `solver.spot_locations_per_pool` cheapest locations per pool
  (plus where the service runs now) are offered spot (a restriction; 0 = all).
- Zone-loss scenarios are all built up front when there are at most
  `solver.max_upfront_scenarios` per service, else added lazily as above.
- `solver.coverage = "pool"` replaces rerouting scenarios by the stricter per-pool rule
  cap_p - spot_p(L) >= beta load_p (no scenario variables).
The coverage constraints make the LP bound weak (the relaxation spreads fractions of an
instance over every zone, the integer plan loses whole instances), so large joint
problems often stop at `solver.time_limit_s` with a proven gap of a few percent while the
incumbent no longer improves; the plan is then "feasible" with that gap and is usable.

A limit (budget, quota, launch/termination budget, on-demand share) whose constraint
is tight at the solution is reported in `binding`, as are min replicas that could not be
met and buckets no pool can serve;
unserved demand in `unserved_rps`. A solve that fails (infeasible, error, time
out without a solution, bad inputs) returns the current fleet as targets with a
status other than optimal/feasible: the caller keeps the fleet.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

from daemon.config import QuotaConfig, SolverConfig
from daemon.domain import Market, Offering, Plan, Route
from daemon.plan.inputs import PlanInputs, ServiceDemand
from daemon.plan.routing import RouteClass, route_classes

_EPS = 1e-6


class PlanInputError(ValueError):
    """Inputs the planner cannot use; the message names the service/pool/field."""


@dataclass
class _Svc:
    idx: int
    name: str
    demand: ServiceDemand
    rate: float  # with headroom
    classes: list[RouteClass]
    offers: list[str]  # offering keys with an n variable
    n: dict = field(default_factory=dict)  # key -> var
    r: dict = field(default_factory=dict)  # (class idx, pool) -> expression
    u: dict = field(default_factory=dict)  # class idx -> expression
    load: dict = field(default_factory=dict)  # pool -> expression (replicas busy)
    cap: dict = field(default_factory=dict)  # pool -> expression (replicas planned)
    scenarios: set = field(default_factory=set)  # spot locations with a coverage scenario
    tputs: dict = field(default_factory=dict)  # pool -> matrix
    peak_u: dict = field(default_factory=dict)
    z: dict = field(default_factory=dict)
    e: object = None
    risk: list = field(default_factory=list)  # expected unserved req/s per spot-loss scenario (coverage "risk")
    mix_note: str | None = None


def _pulp():
    import pulp  # lazy: fleetctl must start fast

    return pulp


def _quota_matches(q: QuotaConfig, o: Offering) -> bool:
    return (
        (q.cloud is None or q.cloud == o.cloud)
        and (q.region is None or q.region == o.region)
        and (q.zone is None or q.zone == (o.zone or "-"))
        and (q.instance_type is None or q.instance_type == o.instance_type)
        and (q.gpu is None or q.gpu == o.gpu)
        and (q.market is None or q.market == str(o.market))
    )


def _current_counts(inputs: PlanInputs) -> dict[tuple[str, str], int]:
    m: dict[tuple[str, str], int] = defaultdict(int)
    for inst in inputs.fleet:
        m[(inst.service, inst.offering.key)] += 1
    return dict(m)


def _kept_plan(inputs: PlanInputs, status: str, why: str, solver: str, seconds: float = 0.0) -> Plan:
    """The current fleet as the plan: what a caller keeps when a solve cannot be used."""
    m = _current_counts(inputs)
    offers = {inst.offering.key: inst.offering for inst in inputs.fleet}
    cost = sum(inst.offering.price_per_hour for inst in inputs.fleet)
    return Plan(
        targets=m, offerings=offers, routes=(), cost_per_hour=cost, status=status,
        solver=solver, solve_seconds=seconds, notes=(why,),
    )


def _validated_mix(sd: ServiceDemand, inputs: PlanInputs, tputs: dict) -> tuple[list[list[float]], str | None]:
    grid = inputs.grid
    mix = sd.forecast.mix
    where = f"service {sd.service!r}: forecast.mix"
    if len(mix) != grid.n_input or any(len(row) != grid.n_output for row in mix):
        raise PlanInputError(f"{where} must be {grid.n_input}x{grid.n_output} (the bucket grid)")
    for i, row in enumerate(mix):
        for j, v in enumerate(row):
            if not math.isfinite(v) or v < 0:
                raise PlanInputError(f"{where}[{i}][{j}] must be finite and >= 0, got {v}")
    total = sum(sum(row) for row in mix)
    if total > 0:
        note = None if abs(total - 1) < 1e-6 else f"{sd.service}: mix summed to {total:.4g}, normalized"
        return [[v / total for v in row] for row in mix], note
    # Unknown mix: spread evenly over the cells some pool can serve, and say so.
    cells = [(i, j) for i in range(grid.n_input) for j in range(grid.n_output)
             if any(t[i][j] > 0 for t in tputs.values())]
    out = [[0.0] * grid.n_output for _ in range(grid.n_input)]
    for i, j in cells:
        out[i][j] = 1.0 / len(cells)
    return out, f"{sd.service}: forecast mix unknown, assumed uniform over servable buckets"


def _service_tputs(sd: ServiceDemand, inputs: PlanInputs) -> dict:
    grid = inputs.grid
    out = {}
    allowed = set(sd.allowed_gpus)
    for pool in inputs.capacity.pools(sd.service):
        t = inputs.capacity.get(sd.service, pool)
        if len(t) != grid.n_input or any(len(row) != grid.n_output for row in t):
            raise PlanInputError(
                f"capacity[{sd.service!r}, {pool!r}] must be {grid.n_input}x{grid.n_output} (the bucket grid)"
            )
        for i, row in enumerate(t):
            for j, v in enumerate(row):
                if not math.isfinite(v) or v < 0:
                    raise PlanInputError(f"capacity[{sd.service!r}, {pool!r}][{i}][{j}] must be >= 0, got {v}")
        out[pool] = t
    # keep only pools whose GPU the service allows
    return {p: t for p, t in out.items() if _pool_gpu(p) in allowed}


def _undominated(service, keys, universe, m, is_frozen, eff_price, quotas) -> list[str]:
    """Drop offerings no optimal plan needs.

    o is dominated by o' when both have the same pool and market, are in the same location
    if spot (zone-loss scenarios treat locations apart; on-demand is never lost), match the
    same quotas, o' is open for launches and costs no more (price with expected preemption
    cost; launch cost scales with price), and o runs nothing of this service now. Moving
    o's instances to o' then never costs more and keeps every constraint, so n_o = 0 loses
    nothing; and the model gets far smaller on large catalogs (200 offerings -> tens).
    """
    best: dict[tuple, tuple[float, str]] = {}
    groups: dict[str, tuple] = {}
    for k in keys:
        o = universe[k]
        sig = (o.pool, str(o.market), o.location if o.market == Market.SPOT else "",
               tuple(i for i, q in enumerate(quotas) if _quota_matches(q, o)))
        groups[k] = sig
        if is_frozen(o):
            continue
        cand = (eff_price(o), k)
        if sig not in best or cand < best[sig]:
            best[sig] = cand
    out = []
    for k in keys:
        o, sig = universe[k], groups[k]
        if m.get((service, k), 0) > 0:
            out.append(k)
        elif is_frozen(o):
            continue  # nothing runs there and nothing may start: no variable
        elif best[sig][1] == k:
            out.append(k)
    return out


def _cheapest_spot_locations(service, keys, universe, m, eff_price, k: int) -> list[str]:
    """Keep spot offerings of the k cheapest locations per pool (plus where the service runs now).

    A restriction, not a dominance: it trades a possibly cheaper spread over many
    near-equal zones for a much smaller search (zone-loss coverage makes the choice of
    zones combinatorial). k is solver.spot_locations_per_pool; 0 keeps every location.
    """
    by_pool: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for key in keys:
        o = universe[key]
        if o.market == Market.SPOT and m.get((service, key), 0) == 0:
            by_pool[o.pool].append((eff_price(o), key))
    keep_spot: set[str] = set()
    for pool, cands in by_pool.items():
        locs: list[str] = []
        for _, key in sorted(cands):
            loc = universe[key].location
            if loc not in locs:
                if len(locs) >= k:
                    continue
                locs.append(loc)
            keep_spot.add(key)
    return [key for key in keys
            if universe[key].market != Market.SPOT or m.get((service, key), 0) > 0 or key in keep_spot]


def _pool_gpu(pool: str) -> str:
    """"A100-80GBx2" -> "A100-80GB" (Offering.pool is f"{gpu}x{gpu_count}")."""
    mt = re.fullmatch(r"(.+)x(\d+)", pool)
    return mt.group(1) if mt else pool


def _solver(cfg: SolverConfig, log_path: str | None):
    pulp = _pulp()
    if cfg.backend == "highs":
        return _HighsWarm(msg=False, timeLimit=cfg.time_limit_s, gapRel=cfg.gap, threads=cfg.threads)
    # No "-threads 1" for CBC: the bundled CBC 2.10.3 then sometimes deadlocks its only worker
    # thread until the time limit ("Thread 0 used 0 times, waiting to start 10.0" in its log).
    return pulp.PULP_CBC_CMD(
        msg=False, timeLimit=cfg.time_limit_s, gapRel=cfg.gap, threads=cfg.threads if cfg.threads > 1 else None,
        warmStart=cfg.warm_start, logPath=log_path,
    )


def _highs_class():
    pulp = _pulp()

    class HighsWarm(pulp.HiGHS):
        """PuLP's HiGHS interface plus a MIP start from the variables' initial values."""

        warm = True

        def callSolver(self, lp):
            if self.warm:
                idx, val = [], []
                for v in lp.variables():
                    if v.varValue is not None and v.cat == pulp.const.LpInteger:
                        idx.append(v.index)
                        val.append(float(v.varValue))
                if idx:
                    import numpy as np

                    try:
                        lp.solverModel.setSolution(len(idx), np.array(idx, dtype=np.int32), np.array(val))
                    except Exception:  # a start is a hint; an old highspy without sparse starts is fine
                        pass
            lp.solverModel.run()

    return HighsWarm


def _HighsWarm(**kw):
    return _highs_class()(**kw)


_GAP_RE = re.compile(r"^Gap:\s*([-0-9.eE+]+)", re.M)


def _solve(prob, cfg: SolverConfig) -> tuple[str, float | None, float]:
    """Solve; return (status, gap, seconds). Never raises for solver trouble."""
    pulp = _pulp()
    fd, log_path = tempfile.mkstemp(prefix="plan-cbc-", suffix=".log")
    os.close(fd)
    t0 = time.perf_counter()  # measures the solve for the report; not an input to any decision
    try:
        solver = _solver(cfg, log_path if cfg.backend == "cbc" else None)
        if cfg.backend == "highs":
            solver.warm = cfg.warm_start
        try:
            prob.solve(solver)
        except Exception as e:  # PulpSolverError, a missing binary, a crashed process
            return f"error: {type(e).__name__}: {e}", None, time.perf_counter() - t0
        seconds = time.perf_counter() - t0
        gap = None
        if cfg.backend == "highs":
            try:
                info = prob.solverModel.getInfo()
                g = float(info.mip_gap)
                gap = g if math.isfinite(g) else None
            except Exception:
                gap = None
        else:
            try:
                with open(log_path) as f:
                    mg = _GAP_RE.search(f.read())
                gap = float(mg.group(1)) if mg else None
            except (OSError, ValueError):
                gap = None
    finally:
        try:
            os.unlink(log_path)
        except OSError:
            pass
    st, sol = prob.status, prob.sol_status
    if sol == pulp.const.LpSolutionOptimal:
        return "optimal", (gap if gap is not None else 0.0), seconds
    if sol == pulp.const.LpSolutionIntegerFeasible:
        return "feasible", gap, seconds
    if st == pulp.const.LpStatusInfeasible or sol == pulp.const.LpSolutionInfeasible:
        return "infeasible", None, seconds
    if st == pulp.const.LpStatusUnbounded:
        return "unbounded", None, seconds
    return "no_solution", None, seconds


def plan_ilp(inputs: PlanInputs, solver_cfg: SolverConfig | None = None) -> Plan:
    """Plan the fleet and routing for all services jointly (see the module docstring)."""
    cfg = solver_cfg or SolverConfig()
    solver_name = f"ilp-{cfg.backend}"
    try:
        if cfg.decompose and len(inputs.demands) > 1:
            merged = _plan_per_service(inputs, cfg, solver_name)
            if merged is not None:
                return merged
        return _plan(inputs, cfg, solver_name)
    except PlanInputError as e:
        return _kept_plan(inputs, "invalid_input", str(e), solver_name)


def _plan_per_service(inputs: PlanInputs, cfg: SolverConfig, solver_name: str) -> Plan | None:
    """Solve each service alone; return the union if it also keeps the shared limits, else None.

    Services share only the budget, quotas and the per-tick launch/termination limits, and
    the objective is a sum over services. Each service alone, given every shared limit in
    full, is a relaxation of the joint problem; if the union of the per-service optima keeps
    the shared limits it is optimal for the joint problem too (within the largest per-service
    gap). Small models solve far faster than the joint one, whose zone-loss scenarios make
    the LP bound weak. When a shared limit is violated the caller solves jointly.
    """
    import dataclasses

    pol = inputs.policy
    if pol.budget_per_hour is not None and any(
        sd.lookahead_rate_rps is not None and sd.lookahead_rate_rps > sd.forecast.rate_rps for sd in inputs.demands
    ):
        return None  # the peak budget couples the relaunch variables too; keep it simple: joint
    sub_cfg = cfg.model_copy(update={"time_limit_s": cfg.time_limit_s / len(inputs.demands)})
    subs = []
    for sd in inputs.demands:
        fleet = tuple(f for f in inputs.fleet if f.service == sd.service)
        sub = _plan(dataclasses.replace(inputs, demands=(sd,), fleet=fleet), sub_cfg, solver_name)
        if not sub.acceptable:
            return None
        subs.append(sub)
    targets = {k: n for sub in subs for k, n in sub.targets.items()}
    offerings = {k: o for sub in subs for k, o in sub.offerings.items()}
    m = _current_counts(inputs)
    tol = 1e-9
    cost = sum(n * offerings[k].price_per_hour for (_, k), n in targets.items())
    if pol.budget_per_hour is not None and cost > pol.budget_per_hour + tol:
        return None
    launches = sum(max(0, n - m.get(sk, 0)) for sk, n in targets.items())
    terms = sum(max(0, c - targets.get(sk, 0)) for sk, c in m.items())
    if launches > pol.max_launches_per_tick or terms > pol.max_terminations_per_tick:
        return None
    for q in inputs.quotas:
        used_i = sum(n for (_, k), n in targets.items() if _quota_matches(q, offerings[k]))
        used_g = sum(n * offerings[k].gpu_count for (_, k), n in targets.items() if _quota_matches(q, offerings[k]))
        if (q.max_instances is not None and used_i > q.max_instances) or (q.max_gpus is not None and used_g > q.max_gpus):
            return None
    gaps = [sub.gap for sub in subs if sub.gap is not None]
    return Plan(
        targets=targets, offerings=offerings, routes=tuple(r for sub in subs for r in sub.routes),
        cost_per_hour=round(cost, 6),
        status="optimal" if all(sub.status == "optimal" for sub in subs) else "feasible",
        solver=solver_name, solve_seconds=round(sum(sub.solve_seconds for sub in subs), 4),
        gap=max(gaps) if gaps else None,
        utilization={k: v for sub in subs for k, v in sub.utilization.items()},
        binding=tuple(dict.fromkeys(b for sub in subs for b in sub.binding)),
        unserved_rps={k: v for sub in subs for k, v in sub.unserved_rps.items()},
        notes=tuple(dict.fromkeys([n for sub in subs for n in sub.notes]
                                  + ["solved per service: shared budget, quotas and limits were slack"])),
        objective=sum(sub.objective or 0.0 for sub in subs),
    )


def _plan(inputs: PlanInputs, cfg: SolverConfig, solver_name: str) -> Plan:
    pulp = _pulp()
    policy = inputs.policy
    lead_h = max(0.0, inputs.lead_time_s) / 3600.0
    drain_h = policy.drain_s / 3600.0
    W = cfg.amortize_h
    tau_h = policy.scale_down_delay_s / 3600.0
    peak_frac = max(0.0, (W - tau_h) / W)
    m = _current_counts(inputs)

    # The offering universe: the catalog, plus offerings live instances run on that left it.
    catalog: dict[str, Offering] = {}
    for o in inputs.offerings:
        catalog.setdefault(o.key, o)
    universe = dict(catalog)
    for inst in inputs.fleet:
        universe.setdefault(inst.offering.key, inst.offering)
    max_price = max([o.price_per_hour for o in universe.values()] + [1.0])
    P_u = cfg.unserved_penalty_per_rps or 1e4 * max_price
    P_e = 100.0 * max_price
    P_x = 1e3 * max_price

    def hazard(o: Offering) -> float:
        if o.market != Market.SPOT:
            return 0.0
        return inputs.preemptions_per_hour.get(o.location, cfg.default_preemptions_per_hour)

    def eff_price(o: Offering) -> float:
        return o.price_per_hour * (1.0 + hazard(o) * lead_h)

    def is_frozen(o: Offering) -> bool:
        """No new instances here: cooldown, left the catalog, or spot switched off."""
        return o.key in inputs.unavailable or o.key not in catalog or (o.market == Market.SPOT and not policy.spot)

    def launch_cost(o: Offering) -> float:
        return (lead_h * o.price_per_hour + cfg.launch_penalty_usd) / W

    def removal_cost(o: Offering) -> float:
        return (drain_h * o.price_per_hour + cfg.disruption_usd) / W

    prob = pulp.LpProblem("fleet_plan", pulp.LpMinimize)
    obj = []
    notes: list[str] = []
    limits: dict[str, object] = {}  # name -> constraint, for binding detection
    launches, terminations = [], []
    svcs: list[_Svc] = []

    for si, sd in enumerate(inputs.demands):
        tputs = _service_tputs(sd, inputs)
        mix, mix_note = _validated_mix(sd, inputs, tputs)
        if mix_note:
            notes.append(mix_note)
        rate_raw = sd.forecast.rate_rps
        if not math.isfinite(rate_raw) or rate_raw < 0:
            raise PlanInputError(f"service {sd.service!r}: forecast.rate_rps must be >= 0, got {rate_raw}")
        rate = rate_raw * sd.planning_factor(policy.headroom)
        classes = route_classes(tuple(map(tuple, mix)), rate, tputs, cfg.routing)
        usable = [k for k, o in universe.items() if o.pool in tputs and _pool_gpu(o.pool) in sd.allowed_gpus]
        offers = _undominated(sd.service, usable, universe, m, is_frozen, eff_price, inputs.quotas)
        if cfg.spot_locations_per_pool:
            offers = _cheapest_spot_locations(sd.service, offers, universe, m, eff_price, cfg.spot_locations_per_pool)
        offers += [k for (s, k) in m if s == sd.service and k not in offers]
        svc = _Svc(si, sd.service, sd, rate, classes, offers, tputs=tputs)
        svcs.append(svc)

        # instance counts and change variables
        for oi, key in enumerate(offers):
            o = universe[key]
            cur = m.get((sd.service, key), 0)
            frozen = is_frozen(o)
            n = pulp.LpVariable(f"n_{si}_{oi}", lowBound=0, upBound=cur if frozen else None, cat="Integer")
            n.setInitialValue(cur)
            svc.n[key] = n
            obj.append(eff_price(o) * n)
            if cur == 0:
                obj.append(launch_cost(o) * n)
                launches.append(n)
            else:
                a = pulp.LpVariable(f"a_{si}_{oi}", lowBound=0)
                t = pulp.LpVariable(f"t_{si}_{oi}", lowBound=0)
                prob += a >= n - cur
                prob += t >= cur - n
                obj.append(launch_cost(o) * a + removal_cost(o) * t)
                launches.append(a)
                terminations.append(t)
            if o.pool in tputs:
                svc.cap.setdefault(o.pool, []).append(n)
        svc.cap = {p: pulp.lpSum(v) for p, v in svc.cap.items()}

        # routing and demand
        S = cfg.slice_factor
        loads: dict[str, list] = defaultdict(list)
        for ki, k in enumerate(classes):
            parts = []
            for p, l in k.load.items():
                if p not in svc.cap:
                    continue
                if S:
                    q = pulp.LpVariable(f"q_{si}_{ki}_{p}", lowBound=0, upBound=S, cat="Integer")
                    r = (k.rate / S) * q
                else:
                    r = pulp.LpVariable(f"r_{si}_{ki}_{p}", lowBound=0)
                svc.r[(ki, p)] = r
                parts.append(r)
                loads[p].append(l * r)
            if S:
                qu = pulp.LpVariable(f"qu_{si}_{ki}", lowBound=0, upBound=S, cat="Integer")
                u = (k.rate / S) * qu
            else:
                u = pulp.LpVariable(f"u_{si}_{ki}", lowBound=0)
            svc.u[ki] = u
            prob += pulp.lpSum(parts) + u == k.rate, f"demand_{si}_{ki}"
            obj.append(P_u * u)
        for p, cap in svc.cap.items():
            svc.load[p] = pulp.lpSum(loads.get(p, []))
            prob += svc.load[p] <= cap, f"capacity_{si}_{p}"

        total_n = pulp.lpSum(svc.n.values())
        if sd.min_replicas > 0:
            svc.e = pulp.LpVariable(f"e_{si}", lowBound=0)
            prob += total_n + svc.e >= sd.min_replicas, f"min_replicas_{si}"
            obj.append(P_e * svc.e)
        if policy.min_on_demand_share > 0:
            od = pulp.lpSum(v for k, v in svc.n.items() if universe[k].market == Market.ON_DEMAND)
            c = od >= policy.min_on_demand_share * total_n
            prob += c, f"min_on_demand_{si}"
            limits[f"min_on_demand_share:{sd.service}"] = c

        # lookahead peak: capacity a returning peak needs is relaunched at a cost if not kept
        peak = sd.lookahead_rate_rps
        if peak is not None and peak > rate_raw:
            prate = peak * sd.planning_factor(policy.headroom)
            pclasses = route_classes(tuple(map(tuple, mix)), prate, tputs, cfg.routing)
            for oi, key in enumerate(offers):
                o = universe[key]
                if o.pool in svc.cap and key in catalog:
                    z = pulp.LpVariable(f"z_{si}_{oi}", lowBound=0)
                    svc.z[key] = z
                    obj.append((eff_price(o) * peak_frac + launch_cost(o)) * z)
            ploads: dict[str, list] = defaultdict(list)
            for ki, k in enumerate(pclasses):
                parts = []
                for p, l in k.load.items():
                    if p not in svc.cap:
                        continue
                    rp = pulp.LpVariable(f"rp_{si}_{ki}_{p}", lowBound=0)
                    parts.append(rp)
                    ploads[p].append(l * rp)
                up = pulp.LpVariable(f"up_{si}_{ki}", lowBound=0)
                svc.peak_u[ki] = up
                prob += pulp.lpSum(parts) + up == k.rate, f"peak_demand_{si}_{ki}"
                obj.append(P_u * max(peak_frac, 0.05) * up)
            for p, cap in svc.cap.items():
                zs = [z for key, z in svc.z.items() if universe[key].pool == p]
                prob += pulp.lpSum(ploads.get(p, [])) <= cap + pulp.lpSum(zs), f"peak_capacity_{si}_{p}"

    # fleet-wide limits
    if launches:
        c = pulp.lpSum(launches) <= policy.max_launches_per_tick
        prob += c, "max_launches"
        limits["max_launches_per_tick"] = c
    if terminations:
        x = pulp.LpVariable("x_term", lowBound=0)
        c = pulp.lpSum(terminations) <= policy.max_terminations_per_tick + x
        prob += c, "max_terminations"
        obj.append(P_x * x)
        limits["max_terminations_per_tick"] = c
    spend = pulp.lpSum(universe[k].price_per_hour * n for svc in svcs for k, n in svc.n.items())
    if policy.budget_per_hour is not None:
        c = spend <= policy.budget_per_hour
        prob += c, "budget"
        limits["budget"] = c
        zs = [universe[k].price_per_hour * z for svc in svcs for k, z in svc.z.items()]
        if zs:
            prob += spend + pulp.lpSum(zs) <= policy.budget_per_hour, "budget_peak"
    for qi, q in enumerate(inputs.quotas):
        terms_i, terms_g = [], []
        for svc in svcs:
            for k, n in svc.n.items():
                o = universe[k]
                if _quota_matches(q, o):
                    terms_i.append(n)
                    terms_g.append(o.gpu_count * n)
        if not terms_i:
            continue
        if q.max_instances is not None:
            c = pulp.lpSum(terms_i) <= q.max_instances
            prob += c, f"quota_{qi}_instances"
            limits[f"quota:{q.label}:instances"] = c
        if q.max_gpus is not None:
            c = pulp.lpSum(terms_g) <= q.max_gpus
            prob += c, f"quota_{qi}_gpus"
            limits[f"quota:{q.label}:gpus"] = c

    prob += pulp.lpSum(obj)
    if not prob.variables():  # nothing to decide (no services, or nothing can serve them)
        return _extract(inputs, cfg, svcs, universe, m, limits, "optimal", 0.0, 0.0, solver_name, notes, 0.0)

    # zone-loss coverage scenarios, added lazily (see docstring)
    beta = policy.spot_loss_coverage

    def add_scenario(svc: _Svc, loc: str) -> None:
        svc.scenarios.add(loc)
        si, li = svc.idx, len(svc.scenarios)
        lost: dict[str, list] = defaultdict(list)
        for k, n in svc.n.items():
            o = universe[k]
            if o.market == Market.SPOT and o.location == loc and o.pool in svc.cap:
                lost[o.pool].append(n)
        if cfg.coverage == "pool":
            for p, cap in svc.cap.items():
                if lost.get(p):
                    prob.addConstraint(cap - pulp.lpSum(lost[p]) >= beta * svc.load[p], f"cover_pool_{si}_{li}_{p}")
            return
        sloads: dict[str, list] = defaultdict(list)
        unserved_after = []
        for ki, k in enumerate(svc.classes):
            parts, served = [], []
            for p, l in k.load.items():
                if (ki, p) not in svc.r:
                    continue
                rl = pulp.LpVariable(f"rl_{si}_{li}_{ki}_{p}", lowBound=0)
                parts.append(rl)
                served.append(svc.r[(ki, p)])
                sloads[p].append(l * rl)
            if cfg.coverage == "risk":
                # What is still served after the loss, and what is not (priced by the risk budget).
                ul = pulp.LpVariable(f"ul_{si}_{li}_{ki}", lowBound=0)
                prob.addConstraint(pulp.lpSum(parts) + ul >= pulp.lpSum(served), f"cover_all_{si}_{li}_{ki}")
                unserved_after.append(ul)
            if beta > 0:
                c = pulp.lpSum(parts) >= beta * pulp.lpSum(served)
                prob.addConstraint(c, f"cover_{si}_{li}_{ki}")
        for p, cap in svc.cap.items():
            prob.addConstraint(
                pulp.lpSum(sloads.get(p, [])) <= cap - pulp.lpSum(lost.get(p, [])), f"cover_cap_{si}_{li}_{p}"
            )
        if unserved_after:
            svc.risk.append(loss_weight(loc) * pulp.lpSum(unserved_after))

    def loss_weight(loc: str) -> float:
        """Share of time location `loc` is lost and not yet replaced: hazard (per hour) x the gap
        (hours) from the loss until a replacement serves (detection within a tick + start-up)."""
        h = inputs.preemptions_per_hour.get(loc, cfg.default_preemptions_per_hour)
        return h * (inputs.tick_interval_s + max(0.0, inputs.lead_time_s)) / 3600.0

    spot_locs = {
        svc.name: {universe[k].location for k in svc.offers if universe[k].market == Market.SPOT}
        for svc in svcs
    }
    risk = cfg.coverage == "risk"
    if beta > 0 or risk:
        for svc in svcs:
            if len(spot_locs[svc.name]) <= cfg.max_upfront_scenarios:
                # all at once: one solve, and the LP bound sees the coverage from the start
                for loc in sorted(spot_locs[svc.name]):
                    add_scenario(svc, loc)
                continue
            for (s, k), cnt in m.items():  # seed with where spot runs now: likely kept there
                o = universe[k]
                if s == svc.name and cnt > 0 and o.market == Market.SPOT and o.location in spot_locs[svc.name]:
                    if o.location not in svc.scenarios:
                        add_scenario(svc, o.location)

    risk_rows = {}
    if risk:
        # The expected share of demand spot losses leave unserved stays within the budget:
        #   sum over locations L of P(L lost, not yet replaced) x unserved after losing L
        #     <= policy.spot_risk_budget x demand.
        # It is a chance constraint on the SLO (the share of requests a plan may expect to
        # lose), so a low-hazard location may carry much spot, a fleet spread over many
        # locations needs little spare, and on-demand insurance is bought only where the
        # budget cannot be met otherwise. Lazily added scenarios tighten it (see above).
        for svc in svcs:
            total = sum(k.rate for k in svc.classes)
            risk_rows[svc.name] = total * policy.spot_risk_budget

    def add_risk_rows() -> None:
        for svc in svcs:
            if not svc.risk:
                continue
            name = f"risk_budget_{svc.idx}"
            if name in prob.constraints:
                del prob.constraints[name]
            prob.addConstraint(pulp.lpSum(svc.risk) <= risk_rows[svc.name], name)

    if risk:
        add_risk_rows()

    total_seconds, gaps, rounds = 0.0, [], 0
    while True:
        rounds += 1
        status, gap, seconds = _solve(prob, cfg)
        total_seconds += seconds
        if gap is not None:
            gaps.append(gap)
        if status == "feasible" and (gap is None or gap > cfg.accept_gap):
            # stopped at the time limit far from proven: the incumbent may be little more than
            # the warm start (or an empty fleet on a cold start); acting on it is not safe
            status = f"time_limit: gap {'unknown' if gap is None else f'{gap:.3g}'} > accept_gap {cfg.accept_gap}"
        if status not in ("optimal", "feasible"):
            why = f"solver status {status} after {total_seconds:.2f}s"
            return _kept_plan(inputs, status.split(":")[0], why + "; keeping the current fleet", solver_name,
                              total_seconds)
        if beta <= 0 and not risk:
            break
        missing = []
        for svc in svcs:
            for k, n in svc.n.items():
                o = universe[k]
                if (o.market == Market.SPOT and (n.value() or 0) > 0.5 and o.pool in svc.cap
                        and o.location not in svc.scenarios):
                    missing.append((svc, o.location))
        if not missing:
            break
        for svc, loc in missing:
            if loc not in svc.scenarios:
                add_scenario(svc, loc)
        if risk:
            add_risk_rows()
        for svc in svcs:  # warm start from the fleet again, not from the violating solution
            for k, n in svc.n.items():
                n.setInitialValue(m.get((svc.name, k), 0))
    if rounds > 1:
        notes.append(f"zone-loss scenarios added in {rounds} solves")

    return _extract(inputs, cfg, svcs, universe, m, limits, status, max(gaps) if gaps else None,
                    total_seconds, solver_name, notes, pulp.value(prob.objective))


def _val(x) -> float:
    if isinstance(x, (int, float)):
        return float(x)
    v = x.value()
    return float(v) if v is not None else 0.0


def _extract(inputs, cfg, svcs, universe, m, limits, status, gap, seconds, solver_name, notes, objective) -> Plan:
    targets: dict[tuple[str, str], int] = {}
    offerings: dict[str, Offering] = {}
    cost = 0.0
    utilization: dict[str, float] = {}
    routes: list[Route] = []
    unserved: dict[str, float] = {}
    binding: list[str] = []
    short = False  # demand a limit could be blamed for went unserved

    for svc in svcs:
        counts: dict[str, int] = {}
        for k, n in svc.n.items():
            cnt = int(round(_val(n)))
            if cnt > 0 or m.get((svc.name, k), 0) > 0:
                targets[(svc.name, k)] = cnt
                offerings[k] = universe[k]
            cost += cnt * universe[k].price_per_hour
            counts[k] = cnt
        replicas = defaultdict(int)
        for k, cnt in counts.items():
            replicas[universe[k].pool] += cnt
        for p in svc.cap:
            if replicas[p] > 0:
                utilization[f"{svc.name}/{p}"] = round(_val(svc.load[p]) / replicas[p], 6)
        left = sum(_val(u) for u in svc.u.values())
        if left > 1e-6:
            unserved[svc.name] = round(left, 6)
        for ki, k in enumerate(svc.classes):
            if not any(p in svc.cap for p in k.load):
                binding.append(f"unservable:{svc.name}:{k.label}")
                left -= k.rate  # no limit is to blame for these
        if left > 1e-6:
            short = True
        if svc.e is not None and _val(svc.e) > 1e-6:
            binding.append(f"min_replicas:{svc.name}")
        routes.extend(_routes_for(svc, inputs, replicas))

    short = short or any(b.startswith("min_replicas:") for b in binding)
    for name, con in limits.items():
        if _tight(con, short):
            binding.append(name)

    if unserved:
        notes.append("demand left unserved: " + ", ".join(f"{s} {v:.3g} req/s" for s, v in unserved.items()))
    return Plan(
        targets=targets, offerings=offerings, routes=tuple(routes), cost_per_hour=round(cost, 6),
        status=status, solver=solver_name, solve_seconds=round(seconds, 4), gap=gap,
        utilization=utilization, binding=tuple(dict.fromkeys(binding)), unserved_rps=unserved,
        notes=tuple(notes), objective=objective,
    )


def _tight(con, short: bool) -> bool:
    """Whether a limit binds: slack ~0, or, while demand goes short, too little slack for one
    more unit of anything it counts (a $2.00 budget with $1.86 spent and $0.30 instances).

    PuLP keeps `lhs <= rhs` as `lhs - rhs <= 0`, so the constraint's value is minus its slack.
    """
    activity = sum(abs(coef * _val(v)) for v, coef in con.items())
    if activity <= 1e-6:
        return False
    slack = abs(_val(con))
    if slack <= 1e-5 * max(1.0, abs(con.constant), activity):
        return True
    if short and con.sense == _pulp().const.LpConstraintLE:
        step = min((coef for v, coef in con.items() if coef > 0 and v.cat == "Integer"), default=None)
        return step is not None and slack < step - 1e-9
    return False


def _routes_for(svc: _Svc, inputs: PlanInputs, replicas: dict) -> list[Route]:
    """Weights per class; classes without routed demand get a capacity-proportional fallback."""
    out: list[Route] = []
    grid = inputs.grid
    by_class = {(k.input_bucket, k.output_bucket): (ki, k) for ki, k in enumerate(svc.classes)}
    cell = any(k.output_bucket is not None for k in svc.classes)
    keys = [(i, j) for i in range(grid.n_input) for j in range(grid.n_output)] if cell else \
        [(i, None) for i in range(grid.n_input)]
    for i, j in keys:
        weights: dict[str, float] = {}
        if (i, j) in by_class:
            ki, k = by_class[(i, j)]
            for p in k.load:
                if (ki, p) in svc.r:
                    v = _val(svc.r[(ki, p)])
                    if v > 1e-9:
                        weights[p] = v
        if not weights:  # no demand routed: send by replica count to pools that can serve the bucket
            for p, t in svc.tputs.items():
                row = t[i] if j is None else [t[i][j]]
                if replicas.get(p, 0) > 0 and any(x > 0 for x in row):
                    weights[p] = float(replicas[p])
        total = sum(weights.values())
        for p, w in sorted(weights.items()):
            out.append(Route(svc.name, i, p, w / total, j))
    return out
