r"""Mélange's input format and its slice formulation, written from the paper's math.

Mélange (Griggs et al., arXiv 2404.14527, §5.2; BACKGROUND §1) splits every
(input, output) cell c of the workload histogram into `slice_factor` S equal
slices i of rate lambda_c / S and solves, with binary x_ig and integer y_g,

    min  sum_g cost_g y_g
    s.t. sum_g x_ig = 1                                 for every slice i
         sum_i (lambda_i / MaxTput_g(c(i))) x_ig <= y_g for every GPU type g

`solve_slices` is that model (our reference for the benchmark; no code was
copied: the repository states no licence). Slices of one cell are identical, so
the model is symmetric; counting slices per (cell, GPU type) with an integer in
[0, S] gives the same feasible set without the symmetry, and that is what
`plan_ilp(..., slice_factor=S, routing="cell")` solves. `melange_plan_inputs`
turns a Mélange file into PlanInputs for it, which is how `fleetctl plan
--melange` runs our planner on Mélange's own inputs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from daemon.domain import BucketGrid, CapacityTable, DemandForecast, Market, Offering

MELANGE_SERVICE = "melange"


class MelangeInputError(ValueError):
    """A Mélange input file that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class MelangeProblem:
    gpus: dict[str, tuple[float, tuple[tuple[float, ...], ...]]]  # name -> (cost $/h, tputs[in][out])
    distribution: tuple[tuple[float, ...], ...]  # [in][out] fractions, sum 1
    rate: float  # total req/s
    slice_factor: int
    source: str = "<melange>"

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.distribution), len(self.distribution[0])

    def cell_rates(self) -> list[list[float]]:
        return [[self.rate * f for f in row] for row in self.distribution]


def _matrix(value, where: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and r for r in value):
        raise MelangeInputError(f"{where}: must be a non-empty list of non-empty lists of numbers")
    width = len(value[0])
    rows = []
    for i, row in enumerate(value):
        if len(row) != width:
            raise MelangeInputError(f"{where}[{i}]: has {len(row)} columns, row 0 has {width}")
        out = []
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise MelangeInputError(f"{where}[{i}][{j}]: must be a number >= 0, got {v!r}")
            out.append(float(v))
        rows.append(tuple(out))
    return tuple(rows)


def parse_melange(data: object, source: str = "<melange>") -> MelangeProblem:
    if not isinstance(data, dict):
        raise MelangeInputError(f"{source}: top level must be a JSON object")
    known = {"gpu_info", "workload_distribution", "total_request_rate", "slice_factor"}
    for key in data:
        if key not in known:
            raise MelangeInputError(f"{source}: {key}: unknown field (expected {sorted(known)})")
    for key in ("gpu_info", "workload_distribution", "total_request_rate"):
        if key not in data:
            raise MelangeInputError(f"{source}: {key}: required field missing")
    dist = _matrix(data["workload_distribution"], f"{source}: workload_distribution")
    if sum(sum(r) for r in dist) <= 0:
        raise MelangeInputError(f"{source}: workload_distribution: all fractions are 0")
    # Mélange uses fraction x total_request_rate per cell without checking that fractions sum
    # to 1 (its first example sums to 1.25); we do the same so its own files give its answers.
    rate = data["total_request_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
        raise MelangeInputError(f"{source}: total_request_rate: must be a number >= 0, got {rate!r}")
    sf = data.get("slice_factor", 1)
    if isinstance(sf, bool) or not isinstance(sf, int) or sf < 1:
        raise MelangeInputError(f"{source}: slice_factor: must be an integer >= 1, got {sf!r}")
    info = data["gpu_info"]
    if not isinstance(info, dict) or not info:
        raise MelangeInputError(f"{source}: gpu_info: must be a non-empty object of GPU name -> {{cost, tputs}}")
    gpus = {}
    for name, g in info.items():
        where = f"{source}: gpu_info.{name}"
        if not isinstance(g, dict):
            raise MelangeInputError(f"{where}: must be an object with cost and tputs")
        for key in g:
            if key not in ("cost", "tputs"):
                raise MelangeInputError(f"{where}.{key}: unknown field (expected cost, tputs)")
        cost = g.get("cost")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost <= 0:
            raise MelangeInputError(f"{where}.cost: must be a number > 0 ($/h), got {cost!r}")
        if "tputs" not in g:
            raise MelangeInputError(f"{where}.tputs: required field missing")
        tputs = _matrix(g["tputs"], f"{where}.tputs")
        if (len(tputs), len(tputs[0])) != (len(dist), len(dist[0])):
            raise MelangeInputError(
                f"{where}.tputs: is {len(tputs)}x{len(tputs[0])}, workload_distribution is "
                f"{len(dist)}x{len(dist[0])}"
            )
        gpus[str(name)] = (float(cost), tputs)
    return MelangeProblem(gpus, dist, float(rate), sf, source)


def load_melange(path: str | Path) -> MelangeProblem:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise MelangeInputError(f"{p}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MelangeInputError(f"{p}: line {e.lineno} column {e.colno}: not valid JSON: {e.msg}") from None
    return parse_melange(data, str(p))


@dataclass(frozen=True)
class MelangeResult:
    counts: dict[str, int]
    cost: float
    solve_seconds: float
    status: str

    def as_json(self) -> dict:
        out: dict = {name: n for name, n in self.counts.items()}
        out["cost"] = round(self.cost, 6)
        out["solve_seconds"] = round(self.solve_seconds, 4)
        return out


def solve_slices(problem: MelangeProblem, time_limit_s: float | None = None, threads: int = 1) -> MelangeResult:
    """Mélange's binary slice formulation with PuLP + CBC (the reference the benchmark beats)."""
    import pulp

    S = problem.slice_factor
    names = list(problem.gpus)
    prob = pulp.LpProblem("melange_slices", pulp.LpMinimize)
    y = {g: pulp.LpVariable(f"y_{gi}", lowBound=0, cat="Integer") for gi, g in enumerate(names)}
    load_terms: dict[str, list] = {g: [] for g in names}
    for i, row in enumerate(problem.cell_rates()):
        for j, lam in enumerate(row):
            if lam <= 0:
                continue
            servers = [g for g in names if problem.gpus[g][1][i][j] > 0]
            for s in range(S):
                xs = []
                for g in servers:
                    x = pulp.LpVariable(f"x_{i}_{j}_{s}_{names.index(g)}", cat="Binary")
                    xs.append(x)
                    load_terms[g].append((lam / S / problem.gpus[g][1][i][j]) * x)
                prob += pulp.lpSum(xs) == 1, f"assign_{i}_{j}_{s}"  # infeasible if no GPU serves it, as in Mélange
    for g in names:
        prob += pulp.lpSum(load_terms[g]) <= y[g], f"cap_{names.index(g)}"
    prob += pulp.lpSum(problem.gpus[g][0] * y[g] for g in names)
    t0 = time.perf_counter()
    # threads=None for 1: the bundled CBC can deadlock with "-threads 1" (see ilp._solver)
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=threads if threads > 1 else None))
    seconds = time.perf_counter() - t0
    if prob.sol_status == pulp.const.LpSolutionOptimal:
        status = "optimal"
    elif prob.sol_status == pulp.const.LpSolutionIntegerFeasible:
        status = "feasible"
    else:
        return MelangeResult({}, math.nan, seconds, pulp.LpStatus.get(prob.status, "unknown").lower())
    counts = {g: int(round(y[g].value() or 0)) for g in names}
    cost = sum(problem.gpus[g][0] * n for g, n in counts.items())
    return MelangeResult(counts, cost, seconds, status)


def melange_plan_inputs(problem: MelangeProblem):
    """PlanInputs for our planner with Mélange's assumptions: one on-demand offering per GPU
    type, no fleet, no spot, no headroom, no change costs. Returns (inputs, solver overrides)."""
    from daemon.config import PolicyConfig
    from daemon.plan.inputs import PlanInputs, ServiceDemand

    n_in, n_out = problem.shape
    grid = BucketGrid(tuple(range(n_in + 1)), tuple(range(n_out + 1)))  # Mélange's buckets are unitless
    table = {(MELANGE_SERVICE, f"{name}x1"): tputs for name, (_, tputs) in problem.gpus.items()}
    offerings = tuple(
        Offering("melange", "-", None, name, name, 1, Market.ON_DEMAND, cost)
        for name, (cost, _) in problem.gpus.items()
    )
    at = datetime(1970, 1, 1, tzinfo=timezone.utc)  # static problem: no clock
    total = sum(sum(r) for r in problem.distribution)
    mix = tuple(tuple(f / total for f in row) for row in problem.distribution)
    forecast = DemandForecast(MELANGE_SERVICE, at, 0.0, problem.rate * total, mix, "melange-file")
    policy = PolicyConfig(
        headroom=0.0, spot=False, spot_loss_coverage=0.0, min_on_demand_share=0.0,
        max_launches_per_tick=10**6, max_terminations_per_tick=10**6, drain_s=0.0,
    )
    inputs = PlanInputs(
        now=at, grid=grid,
        demands=(ServiceDemand(MELANGE_SERVICE, forecast, 0, tuple(problem.gpus)),),
        capacity=CapacityTable(table), offerings=offerings, fleet=(), policy=policy, lead_time_s=0.0,
    )
    overrides = {"routing": "cell", "slice_factor": problem.slice_factor, "launch_penalty_usd": 0.0,
                 "disruption_usd": 0.0, "gap": 0.0}
    return inputs, overrides


def solve_with_planner(problem: MelangeProblem, solver_cfg=None, continuous: bool = False,
                       routing: str = "cell") -> tuple[MelangeResult, object]:
    """Our planner on Mélange's inputs: slices counted per (cell, GPU) or continuous shares."""
    from daemon.config import SolverConfig
    from daemon.plan.ilp import plan_ilp

    inputs, overrides = melange_plan_inputs(problem)
    overrides["routing"] = routing
    if continuous:
        overrides["slice_factor"] = None
    base = solver_cfg or SolverConfig()
    cfg = base.model_copy(update=overrides)
    plan = plan_ilp(inputs, cfg)
    counts = {name: 0 for name in problem.gpus}
    for (_, key), n in plan.targets.items():
        counts[plan.offerings[key].gpu] += n
    status = plan.status
    if plan.unserved_rps:
        status = "unserved"
    return MelangeResult(counts, plan.cost_per_hour, plan.solve_seconds, status), plan
