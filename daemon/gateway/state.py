"""What the gateway should look like (desired) and what the running HAProxy reports (observed).

Desired state is what the loop knows after a tick: the plan's routing table, every replica
with its lifecycle state and endpoint, and per service the fitted bytes per token. The sync
maps lifecycle states to what HAProxy must do with the replica's server:

    running                  -> serve  (in its pool's backend, taking new requests)
    requested, provisioning  -> absent (not yet: booting replicas get nothing)
    draining                 -> drain  (no new requests; streams in flight finish)
    terminating, terminated,
    preempted, failed, gone  -> remove (out, and deleted once no connection is left)

A running replica without an endpoint is treated as not yet serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from daemon.domain import Route
from daemon.gateway.bytes_per_token import BytesPerToken


class Action(StrEnum):
    SERVE = "serve"
    ABSENT = "absent"
    DRAIN = "drain"
    REMOVE = "remove"


_ACTIONS = {
    "running": Action.SERVE,
    "requested": Action.ABSENT,
    "provisioning": Action.ABSENT,
    "draining": Action.DRAIN,
    "terminating": Action.REMOVE,
    "terminated": Action.REMOVE,
    "preempted": Action.REMOVE,
    "failed": Action.REMOVE,
    "gone": Action.REMOVE,
}

# Admin-state bits of `show servers state` (HAProxy management guide, "show servers state").
ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20  # forced, inherited, config, resolution maintenance
ADMF_DRAIN = 0x08 | 0x10  # forced, inherited drain


def action_for(state: str) -> Action:
    try:
        return _ACTIONS[str(state).lower()]
    except KeyError:
        raise ValueError(f"unknown replica state {state!r} (one of {', '.join(_ACTIONS)})") from None


@dataclass(frozen=True)
class Replica:
    """One replica as the loop knows it: an instance of a service on a pool (e.g. "A10Gx1")."""

    service: str
    pool: str
    name: str  # the instance name; the HAProxy server name derives from it
    endpoint: str | None  # base URL, e.g. http://10.0.0.7:8000
    state: str  # lifecycle state (daemon.lifecycle.State value) or "gone"

    @property
    def action(self) -> Action:
        a = action_for(self.state)
        if a is Action.SERVE and not self.endpoint:
            return Action.ABSENT
        return a

    @classmethod
    def from_instance(cls, row: Any) -> "Replica":
        """From anything with name, service, gpu, gpu_count, state and endpoint (a store Instance row)."""
        return cls(row.service, f"{row.gpu}x{row.gpu_count}", row.name, row.endpoint, str(row.state))


@dataclass(frozen=True)
class DesiredState:
    routes: tuple[Route, ...]
    replicas: tuple[Replica, ...]
    # per service; absent: keep the bucket map HAProxy has (or the configured guess if none)
    bytes_per_token: Mapping[str, BytesPerToken] = field(default_factory=dict)


@dataclass(frozen=True)
class ObservedServer:
    backend: str
    name: str
    addr: str
    port: int
    op_state: int  # 0 stopped (down), 1 starting, 2 running, 3 stopping
    admin_state: int  # bit mask, see ADMF_*
    connections: int  # in use now (`show servers conn` used_cur)

    @property
    def address(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"

    @property
    def admin(self) -> str:
        if self.admin_state & ADMF_MAINT:
            return "maint"
        if self.admin_state & ADMF_DRAIN:
            return "drain"
        return "ready"

    @property
    def up(self) -> bool:
        return self.op_state != 0


@dataclass(frozen=True)
class Observed:
    """The running HAProxy as the Runtime API reports it. `maps[path]` is None for a map it does not load."""

    backends: frozenset[str]
    servers: Mapping[tuple[str, str], ObservedServer]
    maps: Mapping[str, tuple | None]
    reachable: bool = True
    error: str | None = None
