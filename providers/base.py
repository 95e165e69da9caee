"""The narrow seam between the daemon and a cloud: the `Provider` protocol.

Semantics every implementation keeps (modelled on Ray autoscaler v2's
ICloudInstanceProvider, see DESIGN-NOTES):

- `launch` is asynchronous and idempotent by name. It returns as soon as the
  request is accepted; it never waits for the machine. Calling it again with a
  name that is pending or running is a no-op. It raises `LaunchError` only when
  the request is refused outright; failures found later are reported by `list`.
- `list` is eventually consistent: an instance launched a moment ago may be
  missing, an instance terminated a moment ago may still show. It reports every
  instance the provider holds under our names, each with a status. A spot
  instance the cloud took back shows as PREEMPTED or disappears; the caller
  treats a known name that vanished as lost.
- `terminate` is idempotent: unknown or already gone names are fine.
- `offerings_snapshot` lists what can be rented with the price in effect and
  when those prices were read (providers cache their catalog and refresh it on
  their own schedule; the loop reads it every tick and records `read_at`).
- `unavailable_markets(now)` names offering keys the provider itself knows to
  be unusable now (SkyPilot: zones that just refused a launch), on top of what
  the store's history tells the loop.
- `list` has no side effects beyond reading the cloud: publishing endpoints,
  cleaning up and recording are the loop's.

These five are all the loop calls; nothing is probed with getattr.

Names are deterministic (derived from the instance id the store assigned before
the call), so a daemon that crashed between writing its intent and calling the
cloud repairs itself on restart instead of leaking or duplicating machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from daemon.domain import Offering


class InstanceStatus(StrEnum):
    PENDING = "pending"  # accepted, machine starting or server not yet healthy
    RUNNING = "running"  # serving: health endpoint answers
    PREEMPTED = "preempted"  # the cloud took a spot instance back
    FAILED = "failed"  # launch failed after acceptance, or the instance broke
    TERMINATED = "terminated"  # gone after our terminate


class FailureKind(StrEnum):
    NO_CAPACITY = "no_capacity"
    QUOTA = "quota"
    CREDENTIALS = "credentials"
    OTHER = "other"


class LaunchError(Exception):
    def __init__(self, kind: FailureKind, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LaunchRequest:
    name: str
    service: str
    model: str
    offering: Offering


@dataclass(frozen=True)
class ProviderInstance:
    name: str
    status: InstanceStatus
    offering_key: str | None = None
    endpoint: str | None = None  # base URL of the serving endpoint once RUNNING
    failure: FailureKind | None = None
    detail: str = ""
    since: datetime | None = None  # when the provider last saw the status change
    healthy: bool = True  # RUNNING and its health endpoint answered at the last check


@dataclass(frozen=True)
class OfferingsSnapshot:
    """The offerings as read at one moment; instances keep the price in effect at their launch."""

    read_at: datetime
    offerings: tuple[Offering, ...]
    seconds: float = 0.0  # how long the read took
    errors: tuple[str, ...] = ()  # clouds / files that could not be read


@runtime_checkable
class Provider(Protocol):
    name: str

    def offerings_snapshot(self) -> OfferingsSnapshot: ...

    def unavailable_markets(self, now: datetime) -> frozenset[str]: ...

    def launch(self, request: LaunchRequest) -> None: ...

    def terminate(self, name: str) -> None: ...

    def list(self) -> list[ProviderInstance]: ...
