"""The plan step: a pure function of typed inputs, `plan(inputs) -> Plan`."""

from __future__ import annotations

from daemon.domain import Plan
from daemon.plan.greedy import plan_greedy
from daemon.plan.inputs import PlanInputs, ServiceDemand

__all__ = ["plan", "PlanInputs", "ServiceDemand"]


def plan(inputs: PlanInputs) -> Plan:
    return plan_greedy(inputs)
