"""The systemd notify protocol (sd_notify(3)), spoken by hand: no libsystemd, no dependency.

systemd passes a datagram socket in `NOTIFY_SOCKET` (a path, or `@name` for the
abstract namespace) and, with `WatchdogSec=`, the interval in `WATCHDOG_USEC`
(and the pid it is meant for in `WATCHDOG_PID`). A message is newline-separated
`KEY=VALUE` assignments in one datagram. What fleetd sends, and when:

    READY=1          the store is migrated and the first sync is done (Type=notify)
    STATUS=...       one line for `systemctl status` (leader/standby, last tick)
    WATCHDOG=1       from the tick path only (TickWatchdog): a hung tick stops them
    RELOADING=1      SIGHUP received (with MONOTONIC_USEC), then READY=1 when done
    STOPPING=1       SIGTERM received: the tick in flight finishes, then exit
    EXTEND_TIMEOUT_USEC=...  a long start (migration) asks for more time

Without NOTIFY_SOCKET (not under systemd, tests) every call is a cheap no-op.
Sending never raises: a service manager that went away must not fail a tick.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping


class NotifyError(ValueError):
    """NOTIFY_SOCKET / WATCHDOG_USEC hold something this module cannot use (the message says what)."""


def socket_address(value: str) -> str | bytes:
    """The sendto() address of a NOTIFY_SOCKET value: `@name` is abstract (a leading NUL byte)."""
    if not value:
        raise NotifyError("NOTIFY_SOCKET is empty")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd >= 253 may pass vsock:CID:PORT (VMs); fleetd runs on the host.
    raise NotifyError(f"NOTIFY_SOCKET={value!r}: only absolute paths and @abstract names are supported")


def watchdog_usec(environ: Mapping[str, str], pid: int | None = None) -> int | None:
    """WATCHDOG_USEC as systemd means it (sd_watchdog_enabled(3)); None when no watchdog is asked for.

    A WATCHDOG_PID naming another process means the watchdog is not ours (a child
    inherited the environment).
    """
    raw = environ.get("WATCHDOG_USEC")
    if raw is None or raw == "":
        return None
    try:
        usec = int(raw)
    except ValueError:
        raise NotifyError(f"WATCHDOG_USEC={raw!r} is not an integer number of microseconds") from None
    if usec <= 0:
        raise NotifyError(f"WATCHDOG_USEC={raw!r} must be positive")
    want = environ.get("WATCHDOG_PID")
    if want:
        try:
            if int(want) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            raise NotifyError(f"WATCHDOG_PID={want!r} is not a pid") from None
    return usec


def _value(v: str) -> str:
    # One assignment per line: a newline inside a value would start a forged assignment.
    return str(v).replace("\r", " ").replace("\n", " ")


@dataclass
class Notifier:
    """Messages to the service manager. `Notifier.from_environ()` in fleetd's main."""

    address: str | bytes | None = None
    watchdog_usec: int | None = None
    sent: int = 0
    failures: int = 0
    last_error: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, unset: bool = False) -> "Notifier":
        """From NOTIFY_SOCKET / WATCHDOG_USEC; `unset` removes them so child processes
        (SkyPilot's API server, the solver) do not talk to systemd in our name."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        n = cls(address=socket_address(raw) if raw else None, watchdog_usec=watchdog_usec(env))
        if unset and environ is None:
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(k, None)
        return n

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, **fields: str | int) -> bool:
        """Send KEY=VALUE assignments in one datagram; False (never an exception) when not delivered."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k}={_value(v)}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(payload, self.address)
        except OSError as e:
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC: required by Type=notify-reload (systemd >= 253), harmless before.
        fields: dict = {"RELOADING": 1, "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))


@dataclass
class TickWatchdog:
    """WATCHDOG=1 from the tick path: `beat()` at each phase of a tick, and at its end.

    Nothing pings from a timer thread, so when a tick hangs (a provider call that
    never returns, a stuck lock) the pings stop and systemd restarts the service
    after WatchdogSec. Beats closer together than `min_gap_s` (a quarter of the
    interval by default) send nothing: a tick has many phases.
    """

    notifier: Notifier
    clock: Callable[[], float] = time.monotonic
    min_gap_s: float | None = None
    _last: float | None = field(default=None, repr=False)

    def beat(self) -> bool:
        if not self.notifier.enabled or not self.notifier.watchdog_usec:
            return False
        gap = self.min_gap_s if self.min_gap_s is not None else self.notifier.watchdog_usec / 4e6
        now = self.clock()
        if self._last is not None and now - self._last < gap:
            return False
        self._last = now
        return self.notifier.watchdog()


def watchdog_problem(tick_interval_s: float, longest_tick_s: float, watchdog_usec_value: int | None) -> str | None:
    """A warning for fleetd's start when WatchdogSec cannot fit the tick schedule (pings only come
    from ticks, so the gap between two pings is up to one interval plus one tick)."""
    if not watchdog_usec_value:
        return None
    limit = watchdog_usec_value / 1e6
    need = tick_interval_s + longest_tick_s
    if need >= limit:
        return (f"WatchdogSec={limit:g}s is too short for loop.tick_interval_s={tick_interval_s:g}s plus a tick of up "
                f"to {longest_tick_s:g}s: systemd would kill a healthy daemon; set WatchdogSec above {need:g}s")
    return None
