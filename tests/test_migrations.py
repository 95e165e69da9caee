import pytest
from sqlalchemy import inspect

from daemon.store.migrate import SchemaError, current_revision, ensure_current, head_revision, upgrade
from daemon.store.repo import Store
from daemon.store.schema import Base


def test_upgrade_on_empty_sqlite_creates_every_table(db_url):
    st = Store.open(db_url)
    assert current_revision(st.engine) is None
    before, after = upgrade(st.engine)
    assert before is None and after == head_revision()
    tables = set(inspect(st.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    st = Store.open(db_url)
    upgrade(st.engine)
    with st.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []


def test_upgrade_is_idempotent(db_url):
    st = Store.open(db_url)
    upgrade(st.engine)
    before, after = upgrade(st.engine)
    assert before == after == head_revision()


def test_daemon_refuses_an_unmigrated_database_when_told_not_to_upgrade(db_url):
    st = Store.open(db_url)
    with pytest.raises(SchemaError, match="fleetctl db upgrade"):
        ensure_current(st.engine, auto_upgrade=False)
    ensure_current(st.engine, auto_upgrade=True)
    assert current_revision(st.engine) == head_revision()


def _upgrade_in_child(url):
    from daemon.store.migrate import upgrade as up
    from daemon.store.repo import Store as S

    up(S.open(url).engine)


def test_concurrent_upgrades_are_serialized_by_the_lock(db_url):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_upgrade_in_child, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert current_revision(Store.open(db_url).engine) == head_revision()


def _seed(st):
    """A few rows in every table a downgrade must cope with (foreign keys included)."""
    from daemon.domain import Market, Offering
    from daemon.lifecycle import Reason, State
    from tests.conftest import T0

    off = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.46)
    with st.session() as s:
        d = Store.start_decision(s, T0)
        row = Store.create_instance(s, instance_id="chat-000001", name="fleet-chat-000001", service="chat",
                                    provider="sim", offering=off, at=T0, reason=Reason.LAUNCH_REQUESTED,
                                    decision_id=d.id)
        Store.transition(s, row, State.PROVISIONING, Reason.LAUNCH_ACCEPTED, T0, decision_id=d.id)
        Store.alert(s, T0, "warning", "test", "seeded", decision_id=d.id)


def test_downgrade_to_base_and_up_again(db_url):
    from daemon.store.migrate import downgrade

    st = Store.open(db_url)
    upgrade(st.engine)
    _seed(st)
    revisions = _revisions()
    # One step at a time from head to base, and each step leaves a schema that the previous
    # revision's upgrade recognises (current_revision matches), with the seeded rows kept where
    # their tables survive.
    for rev in reversed(revisions[:-1]):
        before, after = downgrade(st.engine, rev)
        assert after == rev
    before, after = downgrade(st.engine, "base")
    assert after is None
    assert set(inspect(st.engine).get_table_names()) <= {"alembic_version"}
    before, after = upgrade(st.engine)
    assert before is None and after == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(st.engine).get_table_names())
    _seed(st)  # the schema works again


def test_each_downgrade_keeps_the_older_data(db_url):
    from sqlalchemy import text

    from daemon.store.migrate import downgrade

    st = Store.open(db_url)
    upgrade(st.engine)
    _seed(st)
    downgrade(st.engine, "0001")
    with st.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instances")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM instance_events")).scalar() == 2
        cols = {c["name"] for c in inspect(conn).get_columns("instances")}
    assert "on_demand_price_per_hour" not in cols
    upgrade(st.engine)
    with st.session() as s:
        from daemon.store.schema import Instance

        assert s.get(Instance, "chat-000001").on_demand_price_per_hour is None


def _revisions():
    from alembic.script import ScriptDirectory

    from daemon.store.migrate import _alembic_config

    script = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]
