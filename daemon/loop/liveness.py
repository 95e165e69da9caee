"""Liveness: what never finishes is timed out, and markets that keep failing back off. Pure.

Every autoscaler we learn from times out the steps a cloud may never finish
(Ray autoscaler v2 fails an instance stuck allocating, Karpenter deletes a
NodeClaim that did not register in 15 minutes, SkyServe fails a replica whose
first readiness probe did not pass within its initial delay). Without it an
instance that never becomes healthy is billed forever and counted as capacity.

- A launch not healthy `policy.launch_timeout_s` after the provider accepted it
  is terminated with reason `launch_timeout` (it ends `failed` once the provider
  confirms it gone, billed until then), its market is cooled down, and the
  reconciler replaces it elsewhere within the disruption budget.
- A market (offering key) whose launches fail n times in a row, with no launch
  there becoming healthy since, stays out for market_cooldown_s x 2^(n-1), at
  most `max_market_cooldown_s` (exponential back-off); from
  `backoff_alert_after` failures in a row it is alerted.
- A termination the provider does not confirm within `terminate_timeout_s` is
  retried every tick (terminate is idempotent) and alerted; a drain held past
  its end by more than `drain_timeout_s` is forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.config import PolicyConfig
from daemon.domain import FleetInstance
from daemon.lifecycle import Reason, State
from daemon.loop.reconcile import Action, ActionKind

# Launch outcomes, per offering, in the order they happened: a failure or a success.
FAILURE_REASONS = frozenset({Reason.LAUNCH_FAILED, Reason.NO_CAPACITY, Reason.QUOTA, Reason.LAUNCH_TIMEOUT})
SUCCESS_REASONS = frozenset({Reason.BECAME_READY})


@dataclass(frozen=True)
class MarketBackoff:
    offering_key: str
    failures: int  # in a row, since the last launch there that became healthy
    last_failure: datetime
    until: datetime


@dataclass(frozen=True)
class Liveness:
    actions: tuple[Action, ...]  # terminations of timed-out launches and forced drains
    stuck_terminations: tuple[FleetInstance, ...]  # asked to terminate long ago, not confirmed

    def timed_out(self) -> set[str]:
        return {a.instance_id for a in self.actions if a.reason is Reason.LAUNCH_TIMEOUT}


def liveness(fleet: list[FleetInstance], now: datetime, policy: PolicyConfig) -> Liveness:
    launch_limit = timedelta(seconds=policy.launch_timeout_s)
    drain_limit = timedelta(seconds=policy.drain_timeout_s)
    term_limit = timedelta(seconds=policy.terminate_timeout_s)
    actions: list[Action] = []
    stuck: list[FleetInstance] = []
    for inst in fleet:
        st = State(inst.state)
        if st is State.PROVISIONING and inst.launched_at is not None and now - inst.launched_at >= launch_limit:
            waited = (now - inst.launched_at).total_seconds()
            actions.append(Action(ActionKind.TERMINATE, inst.service, inst.offering.key, Reason.LAUNCH_TIMEOUT,
                                  inst.id, detail=f"not healthy {waited:.0f} s after the launch was accepted "
                                                  f"(launch_timeout_s = {policy.launch_timeout_s:.0f})"))
        elif (st is State.DRAINING and inst.drain_until is not None
              and now - inst.drain_until >= drain_limit):
            actions.append(Action(ActionKind.TERMINATE, inst.service, inst.offering.key, Reason.DRAIN_TIMEOUT,
                                  inst.id, detail=f"drain held {(now - inst.drain_until).total_seconds():.0f} s "
                                                  "past its end: forced"))
        elif st is State.TERMINATING and inst.state_since is not None and now - inst.state_since >= term_limit:
            stuck.append(inst)
    return Liveness(tuple(actions), tuple(stuck))


def market_backoff(outcomes: list[tuple[datetime, str, str]], policy: PolicyConfig) -> dict[str, MarketBackoff]:
    """Per offering key with failures in a row: how many and until when it is kept out.

    `outcomes` are (time, reason, offering key) of launch outcomes, any order.
    """
    base = policy.market_cooldown_s
    cap = policy.max_market_cooldown_s
    trail: dict[str, list[datetime]] = {}
    for at, reason, key in sorted(outcomes, key=lambda o: o[0]):
        if reason in SUCCESS_REASONS:
            trail.pop(key, None)
        elif reason in FAILURE_REASONS:
            trail.setdefault(key, []).append(at)
    out = {}
    for key, fails in trail.items():
        n = len(fails)
        hold = min(cap, base * 2 ** min(n - 1, 40))
        out[key] = MarketBackoff(key, n, fails[-1], fails[-1] + timedelta(seconds=hold))
    return out
