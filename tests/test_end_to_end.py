"""The two things a new user does first: replay a real trace, then look at the fleet."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli.fleetctl import app
from tests.conftest import AZURE_CONV, REPO, need

runner = CliRunner()


def _simulate(args):
    r = runner.invoke(app, ["simulate", *args, "--json"])
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def test_simulate_real_azure_trace_json_contract(tmp_path):
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    out = _simulate(["--trace", str(need(AZURE_CONV)), "--db", url])
    assert out["total_cost_usd"] > 0
    assert 0.0 <= out["slo_attainment"] <= 1.0
    assert out["slo_attainment"] > 0.9  # a fleet sized on the recent peak with headroom serves the trace
    assert isinstance(out["instance_hours"], dict) and sum(out["instance_hours"].values()) > 0
    assert isinstance(out["preemptions"], int) and out["decisions"] > 50
    assert out["requests"] == 19366

    # The same replay again gives the same figures (seeded, virtual time).
    again = _simulate(["--trace", str(AZURE_CONV), "--db", f"sqlite:///{tmp_path / 'sim2.db'}"])
    for k in ("total_cost_usd", "slo_attainment", "instance_hours", "preemptions", "decisions"):
        assert again[k] == out[k]

    # Refuses to mix a second replay into a used database.
    r = runner.invoke(app, ["simulate", "--trace", str(AZURE_CONV), "--db", url, "--json"])
    assert r.exit_code == 2 and "fresh database" in r.output

    st = runner.invoke(app, ["status", "--db", url, "--json"])
    assert st.exit_code == 0, st.output
    status = json.loads(st.stdout)
    assert status["instances"] and status["cost_per_hour_usd"] > 0
    assert status["cost_per_hour_usd"] == pytest.approx(abs=1e-3, expected=
        sum(i["price_per_hour"] for i in status["instances"] if i["state"] != "requested"))
    assert status["last_decision"]["outcome"] == "applied"
    human = runner.invoke(app, ["status", "--db", url])
    assert "Last decision" in human.output

    aud = json.loads(runner.invoke(app, ["audit", "--db", url, "--json", "--since", out["virtual_start"][:19]]).stdout)
    assert aud["total_cost_usd"] == pytest.approx(out["total_cost_usd"], rel=1e-3)


def test_status_on_a_missing_database_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["status", "--db", f"sqlite:///{tmp_path / 'nope.db'}"])
    assert r.exit_code == 2 and "no database" in r.output


def test_bad_trace_is_a_clear_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["simulate", "--trace", str(p), "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert r.exit_code == 2 and "t.csv:1" in r.output


@pytest.mark.slow
def test_fleetd_sigterm_mid_run_leaves_the_database_consistent(tmp_path):
    cfg = tmp_path / "fleet.toml"
    db = tmp_path / "fleetd.db"
    cfg.write_text(f"""
[store]
url = "sqlite:///{db}"
[loop]
tick_interval_s = 0.5
window_s = 0.5
lead_time_s = 1
[provider.simulated]
launch_latency_s = [0.5, 1.5]
spot_preemptions_per_hour = 200.0
state_file = "{tmp_path / 'cloud.json'}"
[metrics]
enabled = false
[policy]
scale_down_delay_s = 2
drain_s = 0.5
[[services]]
name = "chat"
[services.demand]
kind = "trace"
path = "{need(AZURE_CONV)}"
speedup = 120
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.fleetd", "--config", str(cfg), "--log-json"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        ticks = 0
        while time.time() < deadline and ticks < 12:
            line = proc.stdout.readline()
            if '"event": "tick"' in line:
                ticks += 1
        assert ticks >= 12, "fleetd did not tick"
        time.sleep(0.2)  # land the signal inside a tick, most likely
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert '"event": "stopped"' in rest
    con = sqlite3.connect(db)
    # No tick was left half recorded.
    assert con.execute("select count(*) from decisions where outcome in ('started')").fetchone()[0] == 0
    # Every instance's state is the last state its history reached.
    for iid, state in con.execute("select id, state from instances"):
        last = con.execute("select to_state from instance_events where instance_id=? order by id desc limit 1",
                           (iid,)).fetchone()[0]
        assert last == state, iid
    assert con.execute("select count(*) from instances").fetchone()[0] > 0
    con.close()
    # The next start finds nothing to repair and carries on.
    r = subprocess.run([sys.executable, "-m", "daemon.cli.fleetd", "--config", str(cfg), "--once", "--log-json"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "interrupted_decisions_closed" not in r.stderr
    # The simulated cloud kept its machines across the restart: nothing the daemon ran
    # is reported vanished (drift), and on-demand machines did not "fail".
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from instance_events where reason = 'drift'").fetchone()[0] == 0
    con.close()


def test_forecast_show_reads_the_store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    _simulate(["--trace", str(need(AZURE_CONV)), "--db", url])
    monkeypatch.setenv("FLEET_DB", url)
    r = runner.invoke(app, ["forecast", "show", "--service", "chat"])
    assert r.exit_code == 0, r.output
    assert "chat" in r.output


def test_simulate_with_real_spot_availability_traces(tmp_path):
    from tests.conftest import SPOT_AWS3

    out = _simulate(["--trace", str(need(AZURE_CONV)), "--db", f"sqlite:///{tmp_path / 's.db'}",
                     "--spot-traces", str(need(SPOT_AWS3))])
    assert out["total_cost_usd"] > 0 and out["slo_attainment"] > 0.9
    r = runner.invoke(app, ["simulate", "--trace", str(AZURE_CONV), "--spot-traces", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a directory" in r.output
