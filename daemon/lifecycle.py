"""Instance lifecycle: explicit states, a transition table, typed reasons.

Every transition becomes a row in `instance_events` (time, from, to, reason).
That history is the preemption history and the audit trail, so an edge that is
not in the table is refused rather than recorded.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    REQUESTED = "requested"  # intent recorded, provider not yet called (or call in flight)
    PROVISIONING = "provisioning"  # provider accepted; machine or server starting
    RUNNING = "running"  # serving traffic
    DRAINING = "draining"  # out of routing, finishing in-flight requests
    TERMINATING = "terminating"  # terminate requested from the provider
    TERMINATED = "terminated"  # gone after our terminate (terminal)
    PREEMPTED = "preempted"  # taken back by the cloud (terminal)
    FAILED = "failed"  # never served, or broke (terminal)


class Reason(StrEnum):
    """Why a transition happened: audits GROUP BY this column."""

    LAUNCH_REQUESTED = "launch_requested"  # planner wants capacity
    REPLACED = "replaced"  # launch replaces preempted/failed capacity
    LAUNCH_ACCEPTED = "launch_accepted"
    LAUNCH_FAILED = "launch_failed"
    NO_CAPACITY = "no_capacity"
    QUOTA = "quota"
    BECAME_READY = "became_ready"
    SCALE_DOWN = "scale_down"
    BUDGET = "budget"
    DRIFT = "drift"  # provider truth disagrees with the store (vanished, unknown status)
    DRAIN_COMPLETE = "drain_complete"
    TERMINATE_CONFIRMED = "terminate_confirmed"
    PREEMPTED = "preempted"
    ORPHAN = "orphan"  # found on the provider, unknown to the store: adopted
    CANCELLED = "cancelled"  # intent dropped before the provider was called
    LAUNCH_TIMEOUT = "launch_timeout"  # accepted, never healthy within policy.launch_timeout_s
    DRAIN_TIMEOUT = "drain_timeout"  # a drain held past policy.drain_timeout_s: forced


TERMINAL = frozenset({State.TERMINATED, State.PREEMPTED, State.FAILED})
LIVE = frozenset({State.REQUESTED, State.PROVISIONING, State.RUNNING})
BILLABLE = frozenset({State.PROVISIONING, State.RUNNING, State.DRAINING, State.TERMINATING})

# Each edge with why it exists.
TRANSITIONS: dict[State, dict[State, str]] = {
    State.REQUESTED: {
        State.PROVISIONING: "the provider accepted the launch (or an orphan found starting is adopted)",
        State.FAILED: "the provider refused the launch (capacity, quota, credentials)",
        State.TERMINATED: "intent cancelled before the provider held anything",
        State.RUNNING: "adopted: the provider already runs it (a restart, or an orphan found)",
        State.PREEMPTED: "the spot machine was taken back before we saw it accepted",
    },
    State.PROVISIONING: {
        State.RUNNING: "the server answers its health check",
        State.FAILED: "the machine or the server never came up",
        State.PREEMPTED: "spot capacity taken back while starting",
        State.TERMINATING: "no longer wanted before it became ready, or never healthy in time (launch timeout)",
    },
    State.RUNNING: {
        State.DRAINING: "scale-down: out of routing before termination",
        State.PREEMPTED: "spot capacity taken back",
        State.FAILED: "the instance broke or vanished",
        State.TERMINATING: "drain not needed (drain time 0)",
    },
    State.DRAINING: {
        State.TERMINATING: "drain time elapsed",
        State.PREEMPTED: "taken back while draining (no loss of service)",
        State.FAILED: "broke while draining",
        State.RUNNING: "wanted again before termination: back into routing",
    },
    State.TERMINATING: {
        State.TERMINATED: "the provider no longer lists it",
        State.PREEMPTED: "the cloud took it first",
        State.FAILED: "a launch that timed out is confirmed gone; or terminate failed for good",
    },
    State.TERMINATED: {},
    State.PREEMPTED: {},
    State.FAILED: {},
}


class IllegalTransition(Exception):
    def __init__(self, src: State, dst: State):
        super().__init__(f"illegal instance transition {src} -> {dst}")
        self.src = src
        self.dst = dst


def check_transition(src: State | str, dst: State | str) -> None:
    src, dst = State(src), State(dst)
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(src, dst)


def all_edges() -> list[tuple[State, State]]:
    return [(s, d) for s, dsts in TRANSITIONS.items() for d in dsts]
