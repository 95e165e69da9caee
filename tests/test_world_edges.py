"""The test hooks at the world's edge and the pieces fleetd's wiring relies on, one by one.

- daemon/crashpoint.py: FLEET_CRASH_AT kills at the n-th pass, costs nothing unset, refuses a bad value;
- providers/faults.py: the faults a misbehaving cloud shows, as the crash campaign uses them;
- the simulated cloud with a state file is one cloud for every process (leader and standbys);
- every log line has URL passwords and known secrets masked.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from daemon.config import SimulatedProviderConfig
from daemon.domain import Market
from providers.base import InstanceStatus, LaunchError, LaunchRequest
from tests.conftest import REPO


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_crash_point_kills_at_the_nth_pass_and_costs_nothing_unset():
    code = ("from daemon import crashpoint\n"
            "for k in range(3):\n"
            "    crashpoint.hit('apply.after_launch'); crashpoint.hit('tick.end'); print(k, flush=True)\n")
    r = _run(code, {"FLEET_CRASH_AT": "tick.end:2"})
    assert r.returncode == -signal.SIGKILL and r.stdout.split() == ["0"]
    r = _run(code, {"FLEET_CRASH_AT": ""})
    assert r.returncode == 0 and r.stdout.split() == ["0", "1", "2"]
    r = _run("from daemon import crashpoint; print(crashpoint.hit is crashpoint._noop)", {"FLEET_CRASH_AT": ""})
    assert r.stdout.strip() == "True"
    r = _run("import daemon.crashpoint", {"FLEET_CRASH_AT": "apply.middle:1"})
    assert r.returncode != 0 and "unknown point 'apply.middle'" in r.stderr and "apply.after_launch" in r.stderr
    r = _run("import daemon.crashpoint", {"FLEET_CRASH_AT": "tick.end"})
    assert r.returncode != 0 and "expected <point>:<n>" in r.stderr


def test_the_crash_points_are_all_in_the_code():
    from daemon.crashpoint import POINTS

    text = "".join((REPO / "daemon" / "loop" / f).read_text() for f in ("tick.py",))
    assert [p for p in POINTS if f'crashpoint.hit("{p}")' not in text] == []


class _Clock:
    def __init__(self):
        from tests.conftest import T0

        self.now = T0

    def __call__(self):
        return self.now


def _sim(tmp_path, clock, **kw):
    from providers.simulated import SimulatedProvider

    cfg = SimulatedProviderConfig(state_file=str(tmp_path / "cloud.json"), stockout_probability=0,
                                  launch_failure_probability=0, spot_preemptions_per_hour=0,
                                  launch_latency_s=(10, 10), **kw)
    return SimulatedProvider(cfg, clock, journal_file=tmp_path / "journal.jsonl")


def _req(p, name="chat-000001"):
    off = next(o for o in p.offerings_snapshot().offerings if o.market is Market.ON_DEMAND)
    return LaunchRequest(name=name, service="chat", model="m", offering=off)


def test_one_simulated_cloud_for_every_process_that_opens_its_state_file(tmp_path):
    clock = _Clock()
    leader, standby = _sim(tmp_path, clock), _sim(tmp_path, clock)
    leader.launch(_req(leader))
    assert [i.name for i in standby.list()] == ["chat-000001"]  # the other process sees the machine
    standby.terminate("chat-000001")
    assert [i.status for i in leader.list()] == [InstanceStatus.TERMINATED]
    leader.launch(_req(leader, "chat-000002"))
    journal = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [(e["event"], e["name"]) for e in journal] == [("created", "chat-000001"), ("terminated", "chat-000001"),
                                                          ("created", "chat-000002")]


def _faulty(tmp_path, plan: dict):
    from providers.faults import FaultyProvider

    (tmp_path / "faults.json").write_text(json.dumps(plan))
    clock = _Clock()
    inner = _sim(tmp_path, clock)
    return FaultyProvider(inner, tmp_path / "faults.json"), inner


def test_faults_at_the_providers_edge(tmp_path):
    p, inner = _faulty(tmp_path, {"launch_timeout": 1.0, "timeout_s": 0.01, "journal": str(tmp_path / "j.jsonl")})
    with pytest.raises(TimeoutError, match="accepted by the cloud"):
        p.launch(_req(p))
    assert [i.name for i in inner.list()] == ["chat-000001"]  # the ambiguous case: it did launch
    (tmp_path / "faults.json").write_text(json.dumps({"launch_refused": 1.0}))  # re-read while running
    time.sleep(0.01)
    with pytest.raises(LaunchError):
        p.launch(_req(p, "chat-000002"))
    assert [i.name for i in inner.list()] == ["chat-000001"]
    (tmp_path / "faults.json").write_text(json.dumps({"list_stale": 1.0}))
    first = p.list()
    inner.terminate("chat-000001")
    assert p.list() == first  # the previous answer again
    (tmp_path / "faults.json").write_text(json.dumps({"list_exception": 1.0, "terminate_exception": 1.0}))
    with pytest.raises(ConnectionError):
        p.list()
    with pytest.raises(RuntimeError):
        p.terminate("chat-000001")
    with pytest.raises(ValueError, match="unknown keys"):
        (tmp_path / "faults.json").write_text(json.dumps({"lanch_refused": 1.0}))
        p.list()


def test_a_hung_provider_blocks_until_its_file_goes(tmp_path):
    hang = tmp_path / "hang"
    p, _ = _faulty(tmp_path, {"hang_file": str(hang)})
    hang.touch()
    done = threading.Event()
    threading.Thread(target=lambda: (p.list(), done.set()), daemon=True).start()
    assert not done.wait(0.5)
    hang.unlink()
    assert done.wait(5)


def test_every_log_line_masks_url_passwords_and_known_secrets():
    import structlog

    from daemon.logging import configure_logging

    buf = io.StringIO()
    configure_logging("info", json=True, stream=buf, secrets=["hunter2-pw"])
    log = structlog.get_logger("t")
    log.info("started", store="postgresql+psycopg://fleet:hunter2-pw@db:5432/fleet")
    log.error("failed", error="auth failed for hunter2-pw", nested={"dsn": ["mysql://u:other-pw@h/x"]})
    try:
        raise RuntimeError("connect postgresql://fleet:hunter2-pw@db/fleet refused")
    except RuntimeError:
        log.exception("crashed")
    out = buf.getvalue()
    assert "hunter2-pw" not in out and "other-pw" not in out
    assert "fleet:***@db:5432" in out and "u:***@h" in out
    # The exception's text is rendered, then masked (its traceback's length depends on
    # sys.tracebacklimit, which some libraries set).
    assert "RuntimeError: connect postgresql://fleet:***@db/fleet refused" in out
    configure_logging("info")
