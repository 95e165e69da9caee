"""fleetd as a systemd service: the unit file, the notify protocol, the watchdog, config reload.

systemd is not PID 1 here: the notify protocol is tested against a real AF_UNIX
datagram socket the test listens on (as systemd does), and the unit file with
`systemd-analyze verify` / `security --offline` (scripts/deps-systemd.sh installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon.config import default_config, load_config
from daemon.service.notify import Notifier, NotifyError, TickWatchdog, socket_address, watchdog_problem, watchdog_usec
from daemon.service.reload import reload_config
from tests.conftest import REPO

UNIT = REPO / "deploy" / "fleetd.service"


class Listener:
    """What systemd does with NOTIFY_SOCKET: a datagram socket, messages parsed into dicts."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, n, timeout=5.0):
        end = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < end:
            time.sleep(0.01)
        return [m for _, m in self.messages]

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    lst = Listener(path)
    yield path, lst
    lst.close()


def test_the_protocol_over_a_real_datagram_socket(listener):
    path, lst = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_usec == 30_000_000 and n.watchdog_interval_s == 15.0
    assert n.ready("leader, 3 instances")
    assert n.status("tick 12 applied\nFORGED=1")
    assert n.watchdog()
    assert n.reloading()
    assert n.stopping()
    assert n.extend_timeout(90)
    msgs = lst.wait_for(6)
    assert msgs[0] == {"READY": "1", "STATUS": "leader, 3 instances"}
    assert msgs[1] == {"STATUS": "tick 12 applied FORGED=1"}  # a newline cannot forge an assignment
    assert msgs[2] == {"WATCHDOG": "1"}
    assert msgs[3]["RELOADING"] == "1" and int(msgs[3]["MONOTONIC_USEC"]) > 0
    assert msgs[4] == {"STOPPING": "1"}
    assert msgs[5] == {"EXTEND_TIMEOUT_USEC": "90000000"}
    assert n.sent == 6 and n.failures == 0


def test_abstract_namespace_socket():
    name = f"gpufleet-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener(b"\0" + name.encode())
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert lst.wait_for(1) == [{"READY": "1"}]
    finally:
        lst.close()


def test_without_systemd_everything_is_a_no_op_and_a_gone_socket_never_raises(tmp_path):
    n = Notifier.from_environ({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.ready() is False and n.watchdog() is False
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert gone.ready() is False and gone.failures == 1 and "No such file" in gone.last_error


def test_from_environ_can_unset_the_variables_for_child_processes(listener, monkeypatch):
    path, _ = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environ(unset=True)
    assert n.enabled and n.watchdog_usec == 1_000_000
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ


def test_watchdog_usec_parsing():
    assert watchdog_usec({}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "5000000"}) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}, pid=4242) is None  # not ours
    for bad in ("abc", "-5", "0", "1.5"):
        with pytest.raises(NotifyError, match="WATCHDOG_USEC"):
            watchdog_usec({"WATCHDOG_USEC": bad})
    with pytest.raises(NotifyError, match="WATCHDOG_PID"):
        watchdog_usec({"WATCHDOG_USEC": "5", "WATCHDOG_PID": "me"})
    assert socket_address("@x") == b"\0x" and socket_address("/run/x") == "/run/x"
    with pytest.raises(NotifyError, match="vsock"):
        socket_address("vsock:2:1234")


def test_a_hung_tick_stops_the_watchdog_pings(listener):
    """Pings come from the tick path only: while a tick hangs, systemd hears nothing."""
    path, lst = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})  # 0.4 s
    dog = TickWatchdog(n)  # at most one ping per 0.1 s
    hang, stop = threading.Event(), threading.Event()
    hung_at = []

    def tick(k):
        for _phase in ("observe", "forecast", "plan", "reconcile", "record", "apply", "finish"):
            dog.beat()
            time.sleep(0.01)
            if hang.is_set() and _phase == "apply":
                hung_at.append(time.monotonic())
                stop.wait(30)  # a provider call that never returns
                return

    def loop():
        k = 0
        while not stop.is_set():
            tick(k)
            k += 1
            time.sleep(0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    time.sleep(1.0)
    hang.set()
    time.sleep(1.5)
    stop.set()
    t.join(5)
    times = [at for at, m in lst.messages if m == {"WATCHDOG": "1"}]
    assert hung_at, "the tick never hung"
    before = [x for x in times if x < hung_at[0]]
    after = [x for x in times if x > hung_at[0] + 0.02]
    assert len(before) >= 5  # a healthy loop pings about every 0.1 s
    assert max(b - a for a, b in zip(before, before[1:])) < 0.4  # never a gap systemd would act on
    assert after == []  # hung: no ping, so systemd kills and restarts the service after 0.4 s


def test_watchdog_must_fit_the_tick_schedule():
    assert watchdog_problem(60, 30, 300_000_000) is None
    assert "too short" in watchdog_problem(60, 30, 60_000_000)
    assert watchdog_problem(60, 30, None) is None


# -- the unit file -----------------------------------------------------------------------------


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_the_unit_asks_for_notify_watchdog_restart_hardening_and_a_secrets_file():
    d = _directives(UNIT.read_text())
    want = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "StateDirectory": "gpufleet", "PrivateTmp": "yes",
        "ProtectHome": "yes", "EnvironmentFile": "-/etc/gpufleet/fleetd.env", "KillSignal": "SIGTERM",
    }
    for k, v in want.items():
        assert d.get(k) == [v], f"{k}: {d.get(k)}"
    assert int(d["WatchdogSec"][0]) > default_config().loop.tick_interval_s + default_config().solver.time_limit_s
    assert d["ExecStart"][0].split()[0].endswith("/bin/fleetd") and "--config" in d["ExecStart"][0]
    assert watchdog_problem(default_config().loop.tick_interval_s, default_config().solver.time_limit_s * 3,
                            int(d["WatchdogSec"][0]) * 1_000_000) is None


def _systemd_analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (run scripts/deps-systemd.sh)")
    return exe


def _unit_for_this_checkout(tmp_path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's fleetd (verify checks it exists)."""
    fleetd = shutil.which("fleetd") or str(Path(os.sys.executable).parent / "fleetd")
    if not Path(fleetd).exists():
        pytest.skip("fleetd console script not installed in this environment")
    text = UNIT.read_text().replace("/opt/gpufleet/.venv/bin/fleetd", fleetd)
    out = tmp_path / "fleetd.service"
    out.write_text(text)
    return out


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    exe = _systemd_analyze()
    unit = _unit_for_this_checkout(tmp_path)
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    if "Failed to" in r.stderr and "bus" in r.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run in this container: {r.stderr.strip()}")
    # verify exits 0 on unknown keys too, with a warning: any output is a failure
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    bad = tmp_path / "bad" / "fleetd.service"
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    r = subprocess.run([exe, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in r.stderr  # the check above can fail


def test_the_units_exposure_is_low(tmp_path):
    exe = _systemd_analyze()
    unit = _unit_for_this_checkout(tmp_path)
    r = subprocess.run([exe, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for fleetd.service: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {(r.stdout + r.stderr)[-300:]}")
    assert float(m.group(1)) <= 2.5, r.stdout[-2000:]


# -- SIGHUP reload ------------------------------------------------------------------------------


def test_reload_refuses_a_bad_file_naming_the_key_and_keeps_the_old_config(tmp_path):
    current = load_config(REPO / "config.example.toml")
    bad = tmp_path / "fleet.toml"
    bad.write_text('[policy]\nheadroom = "lots"\n')
    r = reload_config(bad, current)
    assert not r.accepted and r.config is current
    assert "policy.headroom" in r.error and str(bad) in r.error
    assert "refused, old config kept" in r.describe()
    bad.write_text("[policy\n")
    assert "not valid TOML" in reload_config(bad, current).error


def test_reload_applies_live_keys_and_keeps_what_needs_a_restart(tmp_path):
    current = load_config(None)
    f = tmp_path / "fleet.toml"
    f.write_text('[store]\nurl = "sqlite:///other.db"\n[policy]\nheadroom = 0.5\n[metrics]\nport = 9999\n')
    r = reload_config(f, current)
    assert r.accepted
    assert r.config.policy.headroom == 0.5  # takes effect at the next tick
    assert r.config.store.url == current.store.url and r.config.metrics.port == current.metrics.port
    assert set(r.restart_needed) == {"store.url", "metrics.port"}
    assert "policy.headroom" in r.changed and "needs a restart" in r.describe()
    same = reload_config(None, current)
    assert same.accepted and same.changed == () and same.describe() == "config reloaded: no change"
