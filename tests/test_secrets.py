"""Secrets stay secret: a database password never shows in output, errors or the store; the files
the daemon creates are private (0600)."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from daemon.cli.fleetctl import app
from daemon.redact import mask_url, mask_urls_in, redact, url_secrets
from daemon.store.migrate import upgrade
from daemon.store.repo import Store
from tests.conftest import T0
from tests.pg_support import PG_PASSWORD

runner = CliRunner()


@pytest.mark.parametrize("url,masked", [
    ("postgresql+psycopg://fleet:s3cr%40t@db.internal:5432/fleet?sslmode=require",
     "postgresql+psycopg://fleet:***@db.internal:5432/fleet?sslmode=require"),
    ("postgresql://fleet:p:a;ss@10.0.0.5/fleet", "postgresql://fleet:***@10.0.0.5/fleet"),
    ("postgresql+psycopg://fleet@db/fleet", "postgresql+psycopg://fleet@db/fleet"),
    ("postgresql+psycopg://db/fleet?user=fleet&password=hunter22", "postgresql+psycopg://db/fleet?user=fleet&password=***"),
    ("sqlite:///var/lib/gpufleet/fleet.db", "sqlite:///var/lib/gpufleet/fleet.db"),
    ("https://user:tok3n@prom.example/api?api_key=abc123&x=1", "https://user:***@prom.example/api?api_key=***&x=1"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_redact_free_text_and_nested_values():
    url = "postgresql+psycopg://fleet:s3cr%40t@db/fleet"
    assert set(url_secrets(url)) >= {"s3cr%40t", "s3cr@t"}
    msg = f"could not connect to {url}: password s3cr@t rejected"
    out = redact(msg, url_secrets(url))
    assert "s3cr" not in out and "fleet:***@db" in out
    assert mask_urls_in({"db": url, "n": 3, "runs": [url]}) == {"db": mask_url(url), "n": 3, "runs": [mask_url(url)]}
    assert mask_url(None) is None


def test_the_store_never_keeps_a_url_password(store):
    from daemon.store.schema import SimulationRun

    url = "postgresql+psycopg://fleet:topsecret@db/fleet"
    with store.session() as s:
        s.add(SimulationRun(started_at=T0, virtual_start=T0, virtual_end=T0 + timedelta(hours=1),
                            workload=f"trace from {url}", summary={"db": url, "total_cost_usd": 1.0}))
    with store.engine.connect() as conn:
        raw = " ".join(str(v) for row in conn.execute(text("SELECT * FROM simulation_runs")) for v in row)
    assert "topsecret" not in raw and "fleet:***@db" in raw


def test_config_check_masks_the_store_password(tmp_path):
    f = tmp_path / "fleet.toml"
    f.write_text('[store]\nurl = "postgresql+psycopg://fleet:topsecret@db.internal/fleet"\n')
    r = runner.invoke(app, ["config", "check", str(f)])
    assert r.exit_code == 0 and "topsecret" not in r.output and "fleet:***@db.internal" in r.output


def test_no_password_anywhere_on_postgresql(pg_url, tmp_path):
    """Every command that prints, logs or stores the database URL, with a password in it."""
    assert PG_PASSWORD in pg_url
    outputs = []

    def run(*args, code=0):
        r = runner.invoke(app, list(args), env={"COLUMNS": "80"})
        outputs.append(r.output)
        assert r.exit_code == code, r.output
        return r

    # an empty database: status and audit refuse, naming it without the password
    assert "no fleet schema" in run("status", "--db", pg_url, code=2).output
    run("audit", "--db", pg_url, code=2)
    assert "at nothing" in run("db", "current", "--db", pg_url).output
    assert "empty ->" in run("db", "upgrade", "--db", pg_url).output
    run("db", "current", "--db", pg_url)
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[store]\nurl = "{pg_url}"\n'
                   '[[services]]\nname = "chat"\ngpus = ["A10G", "L4"]\n'
                   '[services.demand]\ndemo_days = 0.02\n[services.forecast]\nmodel = "recent_peak"\n')
    run("config", "check", str(cfg))
    sim = run("simulate", "--config", str(cfg), "--db", pg_url, "--json")
    assert json.loads(sim.stdout.strip().splitlines()[-1])["db"].count("***") == 1
    run("status", "--db", pg_url)
    run("status", "--config", str(cfg), "--json")
    run("audit", "--db", pg_url)
    run("events", "--db", pg_url)
    run("pause", "--db", pg_url)
    run("resume", "--db", pg_url)
    # a wrong password: the error names the server, not the password tried
    wrong = pg_url.replace(PG_PASSWORD, "Wr0ng-" + PG_PASSWORD[::-1])
    err = run("status", "--db", wrong, code=2).output
    assert "cannot connect" in err and "***" in err
    outputs.append(run("db", "current", "--db", wrong, code=2).output)
    for out in outputs:
        assert PG_PASSWORD not in out and PG_PASSWORD[::-1] not in out, out
    # the store: the replay's row (and everything else) holds no password
    st = Store.open(pg_url)
    with st.engine.connect() as conn:
        for table in ("simulation_runs", "decisions", "alerts", "controls"):
            dump = " ".join(str(v) for row in conn.execute(text(f"SELECT * FROM {table}")) for v in row)
            assert PG_PASSWORD not in dump, table
        summary = conn.execute(text("SELECT summary FROM simulation_runs")).scalar_one()
    assert "***" in json.dumps(summary)


# -- private files -----------------------------------------------------------------------------


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_sqlite_files_the_daemon_creates_are_0600(tmp_path):
    old = os.umask(0o022)  # a typical operator umask: would give 0644
    try:
        db = tmp_path / "fleet.db"
        st = Store.open(f"sqlite:///{db}")
        upgrade(st.engine)  # also creates the migration lock file
        with st.session() as s:
            Store.alert(s, T0, "info", "test", "x")
        conn = st.engine.connect()  # keep a connection: -wal and -shm exist while it is open
        try:
            for p in (db, f"{db}-wal", f"{db}-shm", f"{db}.migrate.lock"):
                assert os.path.exists(p), p
                assert _mode(p) == 0o600, (p, oct(_mode(p)))
        finally:
            conn.close()
        # a file that already exists keeps the mode its owner gave it
        other = tmp_path / "shared.db"
        other.touch()
        os.chmod(other, 0o640)
        upgrade(Store.open(f"sqlite:///{other}").engine)
        assert _mode(other) == 0o640
    finally:
        os.umask(old)


def test_the_simulated_clouds_state_file_is_0600(tmp_path):
    from daemon.config import SimulatedProviderConfig
    from providers.base import LaunchRequest
    from providers.simulated import SimulatedProvider
    from tests.conftest import FakeClock

    old = os.umask(0o022)
    try:
        state = tmp_path / "cloud.json"
        clock = FakeClock()
        p = SimulatedProvider(SimulatedProviderConfig(state_file=str(state), stockout_probability=0), clock)
        off = p.offerings()[0]
        p.launch(LaunchRequest(name="fleet-chat-000001", service="chat", model="m", offering=off))
        p.list()
        assert state.exists() and _mode(state) == 0o600
        assert "fleet-chat-000001" in state.read_text()
    finally:
        os.umask(old)
