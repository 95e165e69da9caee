import gzip
import json
from datetime import timedelta

import numpy as np
import pytest

from daemon.config import default_config
from daemon.demand.demo import demo_trace
from daemon.demand.errors import TraceError
from daemon.demand.request_log import read_trace
from daemon.demand.source import TraceReplay
from daemon.demand.windows import aggregate
from tests.conftest import AZURE_CODE, AZURE_CONV, need

GRID = default_config().buckets.grid()


def test_azure_traces_read_compressed_with_published_row_counts():
    conv = read_trace(need(AZURE_CONV))
    code = read_trace(need(AZURE_CODE))
    assert len(conv) == 19366 and len(code) == 8819  # shared/data/traces/DATA-README.md
    assert conv.start.isoformat().startswith("2023-11-16T18:15:46")
    assert 3400 < conv.duration_s < 3600
    assert np.all(np.diff(conv.t) >= 0)
    assert conv.bad_rows == []
    assert abs(conv.input_tokens.mean() - 1155) < 5 and abs(code.output_tokens.mean() - 27.9) < 1


def test_malformed_rows_are_reported_with_line_numbers(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n"
                 "not-a-time,1,2\n"
                 "2023-11-16 18:15:47.0,abc,2\n"
                 "2023-11-16 18:15:48.0,10,-3\n"
                 "2023-11-16 18:15:49.0,10,3\n")
    tr = read_trace(p)
    assert len(tr) == 2
    assert [m.split(": ")[0] for m in tr.bad_rows] == [f"{p}:3", f"{p}:4", f"{p}:5"]
    with pytest.raises(TraceError, match=r"t.csv:3: field 'TIMESTAMP': not a time"):
        read_trace(p, on_bad_row="reject")


def test_jsonl_and_gzip(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        for k in range(5):
            f.write(json.dumps({"timestamp": 1_700_000_000_000 + 1000 * k, "input_length": 100 * k,
                                "output_length": 10}) + "\n")
        f.write('{"timestamp": 5}\n')
    tr = read_trace(p)
    assert len(tr) == 5 and tr.t[-1] == pytest.approx(4.0)
    assert tr.bad_rows == [f"{p}:6: field 'input_length': missing"]


def test_unknown_format_names_the_file(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match=r"x.csv:1: cannot tell the request-log format"):
        read_trace(p)


def test_windows_count_every_request_once_and_keep_quiet_windows():
    t = np.array([0.5, 1.0, 59.9, 60.0, 185.0])
    ins = np.array([10, 300, 5000, 20000, 100])
    outs = np.array([10, 70, 300, 5000, 1])
    ws = aggregate("chat", GRID, default_config().buckets and __import__("datetime").datetime(2026, 1, 1,
                   tzinfo=__import__("datetime").timezone.utc), 60.0, t, ins, outs, 0, 4)
    assert [w.requests for w in ws] == [3, 1, 0, 1]
    assert ws[0].counts[0][0] == 1 and ws[0].counts[1][1] == 1 and ws[0].counts[3][2] == 1
    assert ws[1].counts[3][3] == 1  # past the last edges: the last bucket
    assert ws[0].input_tokens == 5310


def test_replay_emits_each_window_once():
    tr = read_trace(need(AZURE_CONV))
    rep = TraceReplay("chat", tr, GRID, 60.0, tr.start)
    first = rep.poll(tr.start + timedelta(seconds=125))
    assert len(first.windows) == 2
    assert len(rep.poll(tr.start + timedelta(seconds=125)).windows) == 2  # not committed: polled again
    rep.commit(first)
    assert rep.poll(tr.start + timedelta(seconds=125)).windows == ()
    rest = rep.poll(rep.end + timedelta(hours=1))
    assert sum(w.requests for w in first.windows + rest.windows) == len(tr)
    # A restarted replay resumes the trace where its cursor says, with the same origin.
    other = TraceReplay("chat", tr, GRID, 60.0, tr.start + timedelta(days=9))
    other.resume(first.cursor)
    assert other.origin == tr.start
    assert [w.start for w in other.poll(rep.end).windows] == [w.start for w in rest.windows]


def test_demo_workload_is_seeded_and_matches_its_sources():
    a = demo_trace(days=2, mean_rps=3, seed=5)
    b = demo_trace(days=2, mean_rps=3, seed=5)
    assert np.array_equal(a.t, b.t) and np.array_equal(a.input_tokens, b.input_tokens)
    assert len(a) / (2 * 86400) == pytest.approx(3, rel=0.25)
    hours = (a.t // 3600) % 24
    per_hour = np.bincount(hours.astype(int), minlength=24)
    assert per_hour[14:18].mean() > 2 * per_hour[2:6].mean()  # the daily cycle
    # Medians of the 65/35 conversation/code mixture fall between the two services' medians.
    assert 1020 <= np.median(a.input_tokens) <= 1469
    assert 13 <= np.median(a.output_tokens) <= 129
