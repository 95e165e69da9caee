"""The one parser per request-log format (replay and live tailing share it)."""

from __future__ import annotations

import json
import lzma
from datetime import datetime, timezone

import numpy as np
import pytest

from daemon.demand.errors import DemandInputError
from daemon.demand.request_log import parse_time, read_trace, scan
from daemon.demand.windows import windows_from_rows
from daemon.domain import BucketGrid
from tests.conftest import AZURE_CODE, AZURE_CONV, need

GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))


def test_azure_2023_trace_reads_every_row_with_line_numbers():
    res = scan(need(AZURE_CONV), "auto")
    assert len(res.rows) == 19_366 and not res.bad  # DATA-README §1
    assert res.rows[0].line == 2
    first = datetime.fromtimestamp(res.rows[0].timestamp, tz=timezone.utc)
    assert first.strftime("%Y-%m-%d %H:%M:%S") == "2023-11-16 18:15:46"
    assert np.mean([r.input_tokens for r in res.rows]) == pytest.approx(1155, abs=1)
    wins = windows_from_rows(res.rows, GRID, 60.0, "conv")
    assert sum(w.requests for w in wins) == 19_366
    assert sum(w.input_tokens for w in wins) == sum(r.input_tokens for r in res.rows)
    # The replay reads the same file through the same parser.
    assert len(read_trace(AZURE_CONV)) == 19_366


def test_azure_code_trace_silent_minutes_are_real_zeros():
    rows = scan(need(AZURE_CODE), "azure").rows
    wins = windows_from_rows(rows, GRID, 60.0, "code")
    zero = [w for w in wins if w.requests == 0]
    assert 8 <= len(zero) <= 14  # DATA-README counts 12 silent minutes (bins from the first request)
    assert max(w.requests for w in wins) >= 500


def test_parse_time_keeps_fractions_and_utc_offsets():
    assert parse_time("2023-11-16 18:15:46.6805900") == pytest.approx(
        datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=timezone.utc).timestamp())
    assert parse_time("2024-05-10T00:00:00Z") == datetime(2024, 5, 10, tzinfo=timezone.utc).timestamp()
    assert parse_time("1700000000.5") == 1700000000.5
    # The offset after a fraction is kept: 18:15:48.5+05:00 is 13:15:48.5 UTC.
    assert parse_time("2023-11-16T18:15:48.5+05:00") == pytest.approx(
        datetime(2023, 11, 16, 13, 15, 48, 500000, tzinfo=timezone.utc).timestamp())
    for bad in ("tomorrow", "2023-13-01", "nan", "inf", "12:00.x"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_jsonl_tailing_leaves_a_half_written_line(tmp_path):
    p = tmp_path / "req.jsonl"
    lines = [json.dumps({"timestamp": 1_700_000_000_000 + 1000 * i, "input_length": 100 + i, "output_length": 20})
             for i in range(3)]
    p.write_text("\n".join(lines) + "\n" + '{"timestamp": 1700000003000, "input_le')
    res = scan(p, "auto")
    assert [r.line for r in res.rows] == [1, 2, 3]
    assert res.rows[1].timestamp == 1_700_000_001.0 and res.rows[1].input_tokens == 101
    with p.open("a") as f:
        f.write('ngth": 7, "output_length": 9}\n')
    more = scan(p, "jsonl", start_offset=res.end_offset, start_line=res.end_line)
    assert len(more.rows) == 1 and more.rows[0].line == 4 and more.rows[0].input_tokens == 7
    assert more.rows[0].offset == res.end_offset
    assert more.end_offset == p.stat().st_size
    again = scan(p, "jsonl", start_offset=more.end_offset, start_line=more.end_line)
    assert again.rows == [] and again.end_offset == more.end_offset


def test_bad_rows_name_the_file_line_and_field(tmp_path):
    p = tmp_path / "req.jsonl"
    p.write_bytes(
        b'{"timestamp": 1000, "input_length": 1, "output_length": 2}\n'
        b'{"timestamp": 2000, "input_length": -5, "output_length": 2}\n'
        b'not json\n'
        b'{"timestamp": 3000, "output_length": 2}\n'
        b'{"timestamp": 4000, "input_length": 1e23, "output_length": 2}\n'
        b'{"timestamp": 5000, "input_length": "inf", "output_length": 2}\n'
        b'{"timestamp": 32503680000000, "input_length": 1, "output_length": 2}\n'
        b'{"timestamp": 6000, "input_length": true, "output_length": 2}\n'
        b'{"timestamp": 7000, "input_length": 1, "output_length": 2, "x": "caf\xe9"}\n'
    )
    with pytest.raises(DemandInputError, match=r"req.jsonl:2: field 'input_length': must be a non-negative integer"):
        scan(p, on_bad_row="reject")
    res = scan(p)
    assert len(res.rows) == 1
    assert [(b.line, b.field) for b in res.bad] == [
        (2, "input_length"), (3, "<line>"), (4, "input_length"), (5, "input_length"), (6, "input_length"),
        (7, "timestamp"), (8, "input_length"), (9, "<line>")]
    assert "missing" in str(res.bad[2]) and "not a real request" in str(res.bad[3])
    assert "outside 1970..2200" in str(res.bad[5]) and "not UTF-8" in str(res.bad[7])


def test_csv_with_column_mapping_and_default_names(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("when,prompt,completion,model\n2024-01-01T00:00:10Z,10,5,a\n2024-01-01T00:00:20+01:00,300,70,a\n")
    cols = {"timestamp": "when", "input_tokens": "prompt", "output_tokens": "completion"}
    res = scan(p, "csv", cols)
    assert [(r.line, r.input_tokens) for r in res.rows] == [(2, 10), (3, 300)]
    assert res.rows[1].timestamp == datetime(2023, 12, 31, 23, 0, 20, tzinfo=timezone.utc).timestamp()
    with p.open("a") as f:
        f.write("2024-01-01T00:01:05Z,abc,1,a\n")
    with pytest.raises(DemandInputError, match=r"log.csv:4: field 'prompt'"):
        scan(p, "csv", cols, start_offset=res.end_offset, start_line=res.end_line, on_bad_row="reject")
    with pytest.raises(DemandInputError, match="no column 'tokens_in'"):
        scan(p, "csv", dict(cols, input_tokens="tokens_in"))
    with pytest.raises(DemandInputError, match="no column 'timestamp'"):
        scan(p, "csv")
    q = tmp_path / "plain.csv"
    q.write_text("timestamp,input_tokens,output_tokens\n1700000000,5,6\n")
    assert [(r.input_tokens, r.output_tokens) for r in scan(q).rows] == [(5, 6)]


def test_unreadable_files_are_clear_errors(tmp_path):
    fake = tmp_path / "t.csv.xz"
    fake.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(DemandInputError, match=r"t.csv.xz: cannot read"):
        read_trace(fake)
    garbage = tmp_path / "g.csv"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DemandInputError, match=r"g.csv:1: cannot tell the request-log format"):
        read_trace(garbage)
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"nope": 1}\n')
    with pytest.raises(DemandInputError, match=r"no valid requests.*e.jsonl:1: field 'timestamp': missing"):
        read_trace(empty)
    real = tmp_path / "ok.csv.xz"
    with lzma.open(real, "wt") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,3")  # no final newline
    assert len(read_trace(real)) == 1  # a finished (compressed) file's last line counts


def test_gateway_log_is_a_format_each_service_reads_its_own(tmp_path):
    """format "haproxy": the gateway's per-request records (daemon/gateway/logformat.py)."""
    def rec(ts, service, status=200, inp=100, out=20, req_bytes=400, term="--"):
        return json.dumps({"v": 1, "ts": ts, "request_id": "r-1", "service": service, "bucket": 0,
                           "backend": f"{service}__A10Gx1", "server": "r1", "status": status, "req_bytes": req_bytes,
                           "resp_bytes": 900, "in_tokens": inp, "out_tokens": out, "tw": 0, "tc": 0, "tr": 5,
                           "ta": 50, "retries": "0", "term": term}) + "\n"
    p = tmp_path / "gateway.log"
    p.write_text(rec(1_700_000_000.5, "chat") + "Server chat__A10Gx1/r1 is DOWN, reason: Layer4 timeout\n"
                 + rec(1_700_000_001.0, "code", inp=7) + rec(1_700_000_002.0, "chat", status=502, inp=None, out=None,
                                                           req_bytes=3000, term="SH")
                 + '{"v": 1, "ts": "soon", "backend": "x", "req_bytes": 1}\n')
    res = scan(p, "auto", service="chat")
    assert [(r.input_tokens, r.output_tokens, r.request_bytes) for r in res.rows] == [(100, 20, 400), (1000, 0, None)]
    assert [(b.line, b.field) for b in res.bad] == [(5, "<record>")]  # a record that is not one: named
    assert [r.input_tokens for r in scan(p, "haproxy", service="code").rows] == [7]
