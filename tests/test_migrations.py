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
