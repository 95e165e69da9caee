"""The plan step: a pure function of typed inputs, `plan(inputs, solver) -> Plan`.

The integer program (daemon/plan/ilp.py) is the planner. When it cannot give a
plan worth acting on (infeasible, or stopped by its time limit too far from the
optimum) it returns the current fleet as the target with a status that is not
`acceptable` and notes that say why: a tick never acts on a half-solved model
and never crashes on one. `solver.backend = "greedy"` selects the one-pool
heuristic (daemon/plan/greedy.py) instead.
"""

from __future__ import annotations

from daemon.config import SolverConfig
from daemon.domain import Plan
from daemon.plan.greedy import plan_greedy
from daemon.plan.ilp import plan_ilp
from daemon.plan.inputs import PlanInputs, ServiceDemand

__all__ = ["plan", "PlanInputs", "ServiceDemand"]


def plan(inputs: PlanInputs, solver: SolverConfig | None = None) -> Plan:
    cfg = solver or SolverConfig()
    if cfg.backend == "greedy":
        return plan_greedy(inputs)
    return plan_ilp(inputs, cfg)
