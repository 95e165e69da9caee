"""Reconcile: from the plan and the fleet to a list of actions. Pure; no I/O, no clock.

Rules, each for a reason:
- Make before break: a running instance of a service is drained only while the
  service keeps at least its planned replica count running without it, so
  moving a pool to a cheaper GPU never opens a capacity gap while the new
  machines boot.
- What serves nothing goes first: when a target shrinks, requested and
  provisioning instances are cancelled before running ones are drained, and
  running ones newest first (the oldest have proven themselves).
- Drain before terminate: a running instance leaves routing for `drain_s`
  before it is terminated; a drained instance wanted again goes back into
  routing instead of a new launch.
- Disruption budgets: at most `max_launches_per_tick` launches and
  `max_terminations_per_tick` removals per tick.
- The dollar cap is never exceeded: a launch that would take the fleet's
  billable $/h over `budget_per_hour` is not made, and the caller alerts.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from daemon.config import PolicyConfig
from daemon.domain import FleetInstance, Offering, Plan
from daemon.lifecycle import State, Reason


class ActionKind(StrEnum):
    LAUNCH = "launch"
    CANCEL = "cancel"  # requested -> terminated: the provider was never called, or holds nothing
    DRAIN = "drain"  # running -> draining
    UNDRAIN = "undrain"  # draining -> running
    TERMINATE = "terminate"  # provisioning/draining/running -> terminating


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    service: str
    offering_key: str
    reason: Reason
    instance_id: str | None = None
    drain_until: datetime | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        return {"kind": str(self.kind), "service": self.service, "offering": self.offering_key,
                "reason": str(self.reason), "instance": self.instance_id, "detail": self.detail}


@dataclass(frozen=True)
class Reconciliation:
    actions: tuple[Action, ...]
    skipped_for_budget: int = 0
    skipped_for_limits: int = 0
    held_for_make_before_break: int = 0


def _price(fleet: list[FleetInstance]) -> float:
    return sum(i.offering.price_per_hour for i in fleet
               if State(i.state) not in (State.TERMINATED, State.PREEMPTED, State.FAILED))


def reconcile(plan: Plan, fleet: list[FleetInstance], offerings: dict[str, Offering], policy: PolicyConfig,
              now: datetime, recently_lost: Counter | None = None,
              hold_drains: frozenset[str] = frozenset()) -> Reconciliation:
    """`recently_lost` counts, per service, instances lost (preempted, failed) since the last tick;
    `hold_drains` names draining instances the gateway says still hold connections: not terminated yet."""
    recently_lost = Counter(recently_lost or {})
    actions: list[Action] = []
    launches_left = policy.max_launches_per_tick
    removals_left = policy.max_terminations_per_tick
    skipped_budget = skipped_limits = held = 0

    undrained: set[str] = set()

    groups: dict[tuple[str, str], list[FleetInstance]] = defaultdict(list)
    for inst in fleet:
        groups[(inst.service, inst.offering.key)].append(inst)
    running_by_service = Counter(i.service for i in fleet if State(i.state) is State.RUNNING)
    target_by_service = Counter()
    for (svc, _), n in plan.targets.items():
        target_by_service[svc] += n
    billable = _price(fleet)
    budget = policy.budget_per_hour

    keys = sorted(set(groups) | {k for k, n in plan.targets.items() if n > 0})
    # Replacements first, so a lost replica is restored before growth elsewhere.
    keys.sort(key=lambda k: (-recently_lost[k[0]], k))
    for key in keys:
        svc, okey = key
        insts = groups.get(key, [])
        live = [i for i in insts if State(i.state) in (State.REQUESTED, State.PROVISIONING, State.RUNNING)]
        draining = sorted((i for i in insts if State(i.state) is State.DRAINING),
                          key=lambda i: (i.drain_until or now), reverse=True)
        want = plan.targets.get(key, 0)
        if want > len(live):
            need = want - len(live)
            for inst in draining[:need]:
                actions.append(Action(ActionKind.UNDRAIN, svc, okey, Reason.LAUNCH_REQUESTED, inst.id,
                                      detail="wanted again before termination"))
                undrained.add(inst.id)
                need -= 1
            off = offerings.get(okey) or plan.offerings.get(okey)
            for _ in range(need):
                if off is None:
                    break
                if launches_left <= 0:
                    skipped_limits += 1
                    continue
                if budget is not None and billable + off.price_per_hour > budget + 1e-9:
                    skipped_budget += 1
                    continue
                # A launch that restores capacity the service just lost is a replacement,
                # wherever it lands (the lost zone is usually in cooldown).
                reason = Reason.REPLACED if recently_lost[svc] > 0 else Reason.LAUNCH_REQUESTED
                if recently_lost[svc] > 0:
                    recently_lost[svc] -= 1
                actions.append(Action(ActionKind.LAUNCH, svc, okey, reason))
                launches_left -= 1
                billable += off.price_per_hour
        elif want < len(live):
            excess = len(live) - want
            order = {State.REQUESTED: 0, State.PROVISIONING: 1, State.RUNNING: 2}
            victims = sorted(live, key=lambda i: (order[State(i.state)],
                                                  -(i.launched_at or now).timestamp(), i.id))
            for inst in victims[:excess]:
                st = State(inst.state)
                if removals_left <= 0:
                    skipped_limits += 1
                    continue
                if st is State.REQUESTED:
                    actions.append(Action(ActionKind.CANCEL, svc, okey, Reason.SCALE_DOWN, inst.id))
                elif st is State.PROVISIONING:
                    actions.append(Action(ActionKind.TERMINATE, svc, okey, Reason.SCALE_DOWN, inst.id))
                else:
                    if running_by_service[svc] - 1 < target_by_service[svc]:
                        held += 1
                        continue
                    running_by_service[svc] -= 1
                    if policy.drain_s > 0:
                        actions.append(Action(ActionKind.DRAIN, svc, okey, Reason.SCALE_DOWN, inst.id,
                                              drain_until=now + timedelta(seconds=policy.drain_s)))
                    else:
                        actions.append(Action(ActionKind.TERMINATE, svc, okey, Reason.SCALE_DOWN, inst.id))
                removals_left -= 1
    # Drains that are done become terminations, unless wanted again above (no removal
    # budget: the decision to remove was taken, and counted, when the drain began).
    for inst in fleet:
        if (State(inst.state) is State.DRAINING and inst.id not in undrained and inst.name not in hold_drains
                and inst.drain_until is not None and inst.drain_until <= now):
            actions.append(Action(ActionKind.TERMINATE, inst.service, inst.offering.key, Reason.DRAIN_COMPLETE, inst.id))
    return Reconciliation(tuple(actions), skipped_budget, skipped_limits, held)
