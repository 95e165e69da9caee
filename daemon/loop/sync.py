"""Phase one of every tick: bring the store in line with the provider's truth.

Ray autoscaler v2's lesson: sync passively first (what exists, what vanished,
what failed), then act. Never trust memory over the store and the provider.
A known name that vanished from the provider's list is a preemption if it was
spot (SkyServe detects preemption the same way: by polling) and drift if it was
on-demand. Names the provider holds that the store does not know are orphans.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from daemon.domain import Market
from daemon.lifecycle import TERMINAL, Reason, State
from daemon.store.repo import Store
from providers.base import FailureKind, InstanceStatus, ProviderInstance

# A launch the provider accepted this recently may not be listed yet (eventual consistency).
LIST_GRACE_S = 120.0

_FAIL_REASON = {FailureKind.NO_CAPACITY: Reason.NO_CAPACITY, FailureKind.QUOTA: Reason.QUOTA}


@dataclass
class SyncResult:
    transitions: Counter = field(default_factory=Counter)
    orphans: list[ProviderInstance] = field(default_factory=list)  # ours by name, unknown to the store
    lost: list[str] = field(default_factory=list)  # names that became preempted/failed: may still hold a cluster
    alerts: list[str] = field(default_factory=list)
    rows: list = field(default_factory=list)  # the store's non-terminal instance rows it read (ORM, same session)

    def summary(self) -> dict:
        return {"transitions": {f"{a}->{b}": n for (a, b), n in self.transitions.items()},
                "orphans": [p.name for p in self.orphans]}


def sync_from_provider(s: Session, listed: list[ProviderInstance], now: datetime) -> SyncResult:
    res = SyncResult()
    by_name = {p.name: p for p in listed}
    known = set()

    def _confirm_gone(row, at: datetime | None) -> None:
        # A launch that timed out ends failed (it never served); any other termination, terminated.
        if row.last_reason == str(Reason.LAUNCH_TIMEOUT):
            move(row, State.FAILED, Reason.LAUNCH_TIMEOUT, at, "terminated after its launch timed out")
        else:
            move(row, State.TERMINATED, Reason.TERMINATE_CONFIRMED, at)

    def move(row, to: State, reason: Reason, at: datetime | None, detail: str | None = None) -> None:
        src = row.state
        when = min(at or now, now)
        if row.launched_at and when < row.launched_at:
            when = row.launched_at
        if row.state_since and when < row.state_since:  # an instance's history runs forward
            when = row.state_since
        Store.transition(s, row, to, reason, when, detail)
        res.transitions[(src, str(to))] += 1
        if to in (State.PREEMPTED, State.FAILED):
            res.lost.append(row.name)

    res.rows = Store.instances(s, states=frozenset(State) - TERMINAL)
    for row in res.rows:
        known.add(row.name)
        st = State(row.state)
        p = by_name.get(row.name)
        spot = row.market == str(Market.SPOT)
        if p is None:
            if st is State.REQUESTED:
                continue  # never reached the provider; apply launches it
            if st is State.TERMINATING:
                _confirm_gone(row, now)
                continue
            if st is State.PROVISIONING and row.launched_at and now - row.launched_at < timedelta(seconds=LIST_GRACE_S):
                continue
            if spot:
                move(row, State.PREEMPTED, Reason.PREEMPTED, now, "vanished from the provider's list")
            else:
                move(row, State.FAILED, Reason.DRIFT, now, "vanished from the provider's list")
                res.alerts.append(f"{row.name}: on-demand instance vanished from the provider")
            continue
        if p.status is InstanceStatus.PENDING:
            if st is State.REQUESTED:
                move(row, State.PROVISIONING, Reason.LAUNCH_ACCEPTED, p.since, "adopted: accepted before a restart")
        elif p.status is InstanceStatus.RUNNING:
            if st in (State.REQUESTED, State.PROVISIONING):
                if p.endpoint:
                    row.endpoint = p.endpoint
                move(row, State.RUNNING, Reason.BECAME_READY, p.since)
            elif st is State.RUNNING and p.endpoint and row.endpoint != p.endpoint:
                row.endpoint = p.endpoint
        elif p.status is InstanceStatus.PREEMPTED:
            move(row, State.PREEMPTED, Reason.PREEMPTED, p.since, p.detail)
        elif p.status is InstanceStatus.FAILED:
            reason = _FAIL_REASON.get(p.failure, Reason.LAUNCH_FAILED) if st in (State.REQUESTED, State.PROVISIONING) else Reason.DRIFT
            move(row, State.FAILED, reason, p.since, p.detail or None)
        elif p.status is InstanceStatus.TERMINATED:
            if st is State.TERMINATING:
                _confirm_gone(row, p.since)
            elif st is State.REQUESTED:
                continue  # an earlier incarnation of the name; apply launches it again
            else:
                move(row, State.FAILED, Reason.DRIFT, p.since, "terminated outside the daemon")
                res.alerts.append(f"{row.name}: terminated outside the daemon")
    for p in listed:
        if p.name not in known and p.status in (InstanceStatus.PENDING, InstanceStatus.RUNNING):
            # Ours by name but unknown to the store (e.g. a store restored from backup):
            # the tick's clean-up adopts or terminates it, and alerts once.
            res.orphans.append(p)
    return res
