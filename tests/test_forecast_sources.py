"""Rate-series readers for the forecast backtests: rate CSV, the ServeGen pool table."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from daemon.domain import BucketGrid
from forecast.sources import SourceError
from forecast.sources.rate_csv import read_rate_csv, read_servegen_pool

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"
GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))


def need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"shared data missing: {p}")
    return p


def test_rate_csv_blank_is_missing_and_iso_or_epoch(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("timestamp,rate\n2024-01-01T00:00:00Z,1.5\n2024-01-01T00:01:00Z,\n2024-01-01T00:03:00Z,0\n")
    s = read_rate_csv(p)
    assert s.step_s == 60 and len(s) == 4
    assert s.values[0] == 1.5 and math.isnan(s.values[1]) and math.isnan(s.values[2]) and s.values[3] == 0.0
    q = tmp_path / "e.csv"
    q.write_text("timestamp,rate\n0,1\n600,2\n1200,x\n")
    with pytest.raises(SourceError, match=r"e.csv: line 4: field 'rate': not a number"):
        read_rate_csv(q)
    q.write_text("time,rate\n0,1\n")
    with pytest.raises(SourceError, match="missing column 'timestamp'"):
        read_rate_csv(q)


def test_servegen_pool_collection_gaps_are_nan():
    path = need(DATA / "servegen" / "servegen_pool_rates_10min.csv")
    mid = read_servegen_pool(path, "model=m-mid")
    assert len(mid) == 1440 and mid.step_s == 600
    # DATA-README §3b: 84 all-zero windows in 14 days; 62 of them in the 10 days the folder holds
    assert int(np.isnan(mid.values).sum()) == 62
    assert np.nanmin(mid.values) > 0
    small = read_servegen_pool(path, {"model": "m-small"})
    assert int(np.isnan(small.values).sum()) == 6
    with pytest.raises(SourceError, match="no rows match"):
        read_servegen_pool(path, "model=nope")
    with pytest.raises(SourceError, match="several pools"):
        read_servegen_pool(path, None)
