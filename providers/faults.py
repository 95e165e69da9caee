"""A misbehaving cloud for the tests: faults injected at the provider's edge (`FLEET_SIM_FAULTS`).

Real clouds refuse launches, time out after accepting them, answer with stale
or contradictory lists, and throw what no protocol declares; sometimes a call
never returns. The crash campaign and the service tests need fleetd, running as
a process, to meet all of that. `FLEET_SIM_FAULTS=/path/faults.json` wraps the
simulated provider fleetd builds (daemon/wiring.py) in `FaultyProvider`; the
JSON names the faults and their probabilities:

    {"seed": 1,
     "launch_refused": 0.1,      LaunchError(OTHER) before the cloud hears of it
     "launch_no_capacity": 0.05, LaunchError(NO_CAPACITY)
     "launch_exception": 0.05,   RuntimeError before the cloud hears of it (a provider bug)
     "launch_timeout": 0.05,     the cloud ACCEPTS the launch, then the call times out (TimeoutError)
     "terminate_exception": 0.05, "terminate_timeout": 0.05 (the terminate happened, the answer did not come)
     "list_exception": 0.05,     ConnectionError
     "list_stale": 0.1,          the previous answer again (an eventually consistent API)
     "list_contradictory": 0.05, one machine reported in a status that contradicts the last answer
     "timeout_s": 0.2,           how long a timing-out call takes
     "hang_file": "/path",       while this file exists, every call blocks (a hung provider)
     "journal": "/path.jsonl"}   the simulated cloud writes its machine events there

The file is read again when it changes, so a test can switch faults on and off
while fleetd runs. This is the world's edge, not the daemon's logic: without
the variable nothing here is imported. It is not a configuration key.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from providers.base import FailureKind, InstanceStatus, LaunchError, LaunchRequest, OfferingsSnapshot, Provider, \
    ProviderInstance

ENV = "FLEET_SIM_FAULTS"

_KEYS = {"seed", "launch_refused", "launch_no_capacity", "launch_exception", "launch_timeout", "terminate_exception",
         "terminate_timeout", "list_exception", "list_stale", "list_contradictory", "timeout_s", "hang_file", "journal"}


class FaultPlanError(ValueError):
    pass


def read_plan(path: str | Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise FaultPlanError(f"{ENV}={path}: unreadable fault plan: {e}") from None
    if not isinstance(doc, dict):
        raise FaultPlanError(f"{ENV}={path}: expected a JSON object")
    unknown = set(doc) - _KEYS
    if unknown:
        raise FaultPlanError(f"{ENV}={path}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    return doc


@dataclass
class FaultyProvider:
    """The wrapped provider with the plan's faults; counts what it injected (`injected`)."""

    inner: Provider
    path: Path

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self._mtime: tuple | None = None
        self.plan: dict = {}
        self._last_list: list[ProviderInstance] | None = None
        self.injected: dict[str, int] = {}
        self._reload()
        self._rng = random.Random(int(self.plan.get("seed", 1)) * 7919 + os.getpid())

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        mtime = (st.st_mtime_ns, st.st_size, st.st_ino)  # two writes within one clock tick differ in size
        if mtime != self._mtime:
            self.plan = read_plan(self.path)
            self._mtime = mtime

    def _p(self, key: str) -> bool:
        p = float(self.plan.get(key, 0.0) or 0.0)
        hit = p > 0 and self._rng.random() < p
        if hit:
            self.injected[key] = self.injected.get(key, 0) + 1
            journal = self.plan.get("journal")
            if journal:  # counted where a SIGKILL cannot lose it
                from datetime import timezone

                with open(journal, "a") as f:
                    f.write(json.dumps({"at": datetime.now(timezone.utc).isoformat(), "event": "fault", "kind": key,
                                        "pid": os.getpid()}) + "\n")
        return hit

    def _edge(self) -> None:
        """Every call passes here: re-read the plan, block while the hang file exists."""
        self._reload()
        hang = self.plan.get("hang_file")
        while hang and os.path.exists(hang):
            time.sleep(0.05)

    def _timeout(self, what: str) -> TimeoutError:
        time.sleep(float(self.plan.get("timeout_s", 0.2)))
        return TimeoutError(f"injected: {what} timed out after {self.plan.get('timeout_s', 0.2)} s")

    # -- the protocol ---------------------------------------------------------------

    def offerings_snapshot(self) -> OfferingsSnapshot:
        self._edge()
        return self.inner.offerings_snapshot()

    def unavailable_markets(self, now: datetime) -> frozenset[str]:
        return self.inner.unavailable_markets(now)

    def launch(self, request: LaunchRequest) -> None:
        self._edge()
        if self._p("launch_refused"):
            raise LaunchError(FailureKind.OTHER, f"injected: launch of {request.name} refused")
        if self._p("launch_no_capacity"):
            raise LaunchError(FailureKind.NO_CAPACITY, f"injected: no capacity for {request.name}")
        if self._p("launch_exception"):
            raise RuntimeError(f"injected: provider bug while launching {request.name}")
        self.inner.launch(request)
        if self._p("launch_timeout"):
            raise self._timeout(f"launch of {request.name} (accepted by the cloud)")

    def terminate(self, name: str) -> None:
        self._edge()
        if self._p("terminate_exception"):
            raise RuntimeError(f"injected: provider bug while terminating {name}")
        self.inner.terminate(name)
        if self._p("terminate_timeout"):
            raise self._timeout(f"terminate of {name} (done by the cloud)")

    def list(self) -> list[ProviderInstance]:
        self._edge()
        if self._p("list_exception"):
            raise ConnectionError("injected: the provider's list endpoint is unreachable")
        if self._last_list is not None and self._p("list_stale"):
            return list(self._last_list)
        out = self.inner.list()
        self._last_list = list(out)
        if out and self._p("list_contradictory"):
            k = self._rng.randrange(len(out))
            p = out[k]
            # Running reported as still pending, or a pending one reported running without an endpoint.
            flipped = InstanceStatus.PENDING if p.status is InstanceStatus.RUNNING else InstanceStatus.RUNNING
            out[k] = replace(p, status=flipped, endpoint=None if flipped is InstanceStatus.PENDING else p.endpoint)
        return out


def wrap_from_environ(provider: Provider) -> Provider:
    """The provider with the plan in FLEET_SIM_FAULTS (unset: the provider itself)."""
    path = os.environ.get(ENV)
    if not path:
        return provider
    return FaultyProvider(provider, Path(path))


def journal_from_environ() -> str | None:
    """The journal file the plan names, for the simulated cloud (unset: none)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    return read_plan(path).get("journal")
