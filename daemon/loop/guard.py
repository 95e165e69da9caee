"""What a tick asks before it writes or acts: does this daemon still lead, and is it alive.

Several fleetd may share one store; only the holder of the leader lease acts
(daemon/store/lease.py). The tick goes through this guard:

- `lead()` at the tick's start: renew or take the lease; a standby skips the tick.
- `fence(session)` inside every write transaction of the tick: a daemon that
  lost its lease has the whole transaction rolled back (`LeaseLost`), so it
  cannot record an intent, a sync or a demand window.
- `before_call()` right before every provider call that changes the fleet
  (launch, terminate): the lease is checked again in its own short transaction,
  with `leader.fence_margin_s` to spare, so a call never starts on a lease
  about to lapse.

Each of these also feeds the systemd watchdog (daemon/service/notify.py): the
pings come from the tick path only, so a tick stuck in a provider call or a
lock stops them and systemd restarts the daemon.

Without a lease (a replay, the tests' loops) the guard lets everything through:
such a loop is the only writer of its store.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.service.notify import TickWatchdog
from daemon.store.lease import Leadership, LeaseLost, Role

__all__ = ["Guard", "LeaseLost"]


@dataclass
class Guard:
    leadership: Leadership | None = None
    watchdog: TickWatchdog | None = None

    def lead(self) -> bool:
        """Renew or take the lease; True when this daemon leads this tick."""
        self.beat()
        if self.leadership is None:
            return True
        return self.leadership.refresh() is Role.LEADER

    @property
    def token(self) -> int | None:
        """The fencing token of the lease held now (None without a lease)."""
        lease = self.leadership.lease if self.leadership is not None else None
        return lease.token if lease is not None else None

    def describe(self) -> dict | None:
        """Who decided, for the decision row: holder and token (tokens only grow across holders)."""
        if self.leadership is None or self.leadership.lease is None:
            return None
        return {"holder": self.leadership.holder, "token": self.leadership.lease.token}

    def fence(self, s) -> None:
        self.beat()
        if self.leadership is not None:
            self.leadership.fence(s)

    def before_call(self) -> None:
        self.beat()
        if self.leadership is not None:
            self.leadership.check()

    def beat(self) -> None:
        if self.watchdog is not None:
            self.watchdog.beat()
