import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

# A throwaway PostgreSQL server for the store tests (started as root, skipped elsewhere).
pytest_plugins = ["tests.pg_support"]

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("NO_GCE_CHECK", "True")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
AZURE_CONV = SHARED_DATA / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv.xz"
AZURE_CODE = SHARED_DATA / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv.xz"
SPOT_AWS3 = SHARED_DATA / "spot" / "skyserve" / "AWS3"

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (expected ../shared beside the repository)")
    return path


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Every test that uses the store runs against SQLite and a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    from daemon.store.migrate import upgrade
    from daemon.store.repo import Store

    st = Store.open(db_url)
    upgrade(st.engine)
    return st


class FakeClock:
    """The world's clock at the edge: tests move time by hand."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return FakeClock()
