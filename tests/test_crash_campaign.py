"""Crash safety, proven: fleetd SIGKILLed at every named point of its tick, restarted, then checked.

The campaign (tests/crash_support.py) runs fleetd as a process against the
simulated cloud with a state file, a request log it writes, and provider faults
injected at the cloud's edge; each run is killed at an aimed point
(FLEET_CRASH_AT), at a random moment, or stopped with SIGTERM. This CI version
aims one kill at each of the points; `python bench/crash_campaign.py` runs the
full campaign (100+ kills) and prints its counts.

A second test corrupts a copy of the campaign's results in the ways a broken
daemon would (a machine launched twice, an orphan, an intent never carried out,
a half-recorded decision, a request counted twice, a fleet over budget) and
checks that each is caught: the checks can fail.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace

import pytest

from daemon.crashpoint import POINTS
from tests.crash_support import BUDGET, Campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    return Campaign(tmp, aimed=len(POINTS), random_kills=2, sigterms=2, seed=3, settle_s=15.0).run()


def test_sigkills_at_every_point_of_the_tick_break_nothing(campaign, capsys):
    checks = campaign.check()
    counts = campaign.counts()
    with capsys.disabled():
        print("\ncrash campaign:", json.dumps({k: counts[k] for k in (
            "sigkills", "aimed_kills_landed", "restarts", "instances", "decisions", "cloud_machines_created",
            "faults_injected", "requests_written")}, sort_keys=True))
    assert {k: v for k, v in checks.items() if v} == {}
    # The campaign did what it says: most aimed kills landed, on most points; the fleet moved.
    assert counts["aimed_kills_landed"] >= len(POINTS) - 4
    assert len(counts["aimed_by_point"]) >= len(POINTS) - 4
    assert counts["sigterm_clean_exits"] == counts["sigterms"] == 2
    assert counts["cloud_machines_created"] >= 5 and counts["decisions"] >= 30
    assert sum(counts["faults_injected"].values()) >= 3
    assert campaign.store_peak_usd_per_hour <= BUDGET + 1e-6


def _copy(campaign, tmp_path) -> Campaign:
    dst = tmp_path / "copy"
    shutil.copytree(campaign.tmp, dst)
    c = Campaign(dst, seed=campaign.seed)
    c.runs = [replace(r, log=dst / r.log.name) for r in campaign.runs]
    c.writer = campaign.writer
    return c


def _sql(c: Campaign, sql: str, *args) -> None:
    with sqlite3.connect(c.tmp / "fleet.db") as con:
        con.execute(sql, args)


def test_the_checks_catch_what_a_broken_daemon_would_do(campaign, tmp_path):
    c = _copy(campaign, tmp_path)
    assert {k: v for k, v in c.check().items() if v} == {}
    with sqlite3.connect(c.tmp / "fleet.db") as con:
        iid, name, price = con.execute("SELECT id, name, price_per_hour FROM instances WHERE launched_at IS NOT NULL "
                                       "ORDER BY id LIMIT 1").fetchone()
        dec = con.execute("SELECT decision_id FROM instances WHERE decision_id IS NOT NULL LIMIT 1").fetchone()[0]
    journal = c.tmp / "journal.jsonl"
    created = next(json.loads(x) for x in journal.read_text().splitlines() if '"created"' in x)
    with journal.open("a") as f:
        f.write(json.dumps(created) + "\n")  # the same machine created a second time
    cloud = json.loads((c.tmp / "cloud.json").read_text())
    cloud["instances"].append({**cloud["instances"][0], "name": "chat-999999", "status": "running"})
    (c.tmp / "cloud.json").write_text(json.dumps(cloud))  # a machine the store does not know
    _sql(c, "INSERT INTO instances (id, name, service, provider, cloud, region, zone, instance_type, gpu, gpu_count, "
            "market, offering_key, price_per_hour, state, requested_at, state_since, last_reason) "
            "SELECT 'chat-888888', 'chat-888888', service, provider, cloud, region, zone, instance_type, gpu, "
            "gpu_count, market, offering_key, price_per_hour, 'requested', requested_at, state_since, last_reason "
            "FROM instances WHERE id = ?", iid)  # an intent never carried out, with no history
    _sql(c, "UPDATE decisions SET outcome = 'started' WHERE id = (SELECT MAX(id) FROM decisions)")
    _sql(c, "UPDATE decisions SET actions = '[]' WHERE id = ?", dec)  # intents without their decision's actions
    _sql(c, "INSERT INTO demand_windows (service, window_start, window_seconds, input_bucket, output_bucket, requests, "
            "input_tokens, output_tokens) SELECT service, window_start, window_seconds, input_bucket, output_bucket, "
            "requests, input_tokens, output_tokens FROM demand_windows WHERE requests > 0 LIMIT 1")
    _sql(c, "UPDATE instances SET price_per_hour = ? WHERE id = ?", BUDGET * 2, iid)
    got = c.check()
    for check in ("duplicate_launch", "orphan", "stuck", "decisions", "demand_windows", "budget"):
        assert got[check], f"{check} did not catch its corruption"
