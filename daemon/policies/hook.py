"""A Policy plugged into the tick's decide step (`Loop.policy`, daemon/loop/tick.py).

The tick calls `hook(loop, obs, live, now)` where it would otherwise forecast and
plan, and gets back what the rest of the tick needs: the demand the decision
was sized for (recorded as the decision's forecast), the plan inputs (recorded:
offerings, cooldowns) and the Plan the reconciler turns into actions.
"""

from __future__ import annotations

from datetime import datetime

from daemon.domain import Market
from daemon.lifecycle import Reason
from daemon.loop.decide import FleetState, build_plan_inputs
from daemon.policies.base import EVENT_REASONS, FleetEvent, Policy, PolicyView
from daemon.store.repo import Store


class PolicyHook:
    """Adapts a `Policy` to the tick; keeps the one thing the view needs across ticks (events seen)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.name = policy.name
        self._since: datetime | None = None
        self._seen: set[tuple[str, str]] = set()

    def _events(self, loop, now: datetime) -> tuple[FleetEvent, ...]:
        """Lifecycle events since the previous decision (one query; a failed launch is recorded
        at the tick that made it, so the window starts at the previous decision, inclusive)."""
        if self._since is None:
            self._since = now
            return ()
        with loop.store.session() as s:
            rows = Store.events_since(s, self._since, EVENT_REASONS)
        out = []
        for r in rows:
            key = (r.instance_id, r.reason)
            if key in self._seen:
                continue
            self._seen.add(key)
            out.append(FleetEvent(r.at, Reason(r.reason), r.instance_id, r.service, r.location, Market(r.market),
                                  r.offering_key))
        self._since = now
        return tuple(out)

    def __call__(self, loop, obs, live, now: datetime):
        gone = live.timed_out()
        fleet = tuple(f for f in obs.fleet.fleet if f.id not in gone)
        view = PolicyView(cfg=loop.cfg, now=now, history=obs.history, fleet=fleet, offerings=tuple(obs.offerings),
                          unavailable=obs.fleet.unavailable, events=self._events(loop, now), capacity=loop.capacity)
        decision = self.policy.decide(view)
        state = FleetState(list(fleet), obs.fleet.unavailable, obs.fleet.preemptions_per_hour,
                           obs.fleet.recently_lost, obs.fleet.backoff)
        inputs = build_plan_inputs(loop.cfg, now, decision.forecasts, loop.capacity, list(obs.offerings), state)
        return decision.forecasts, inputs, decision.plan
