"""Bad input gets a clear error before the daemon acts on it (issue 13), one test per defect found.

Configs go through `fleetctl config check` and fleetd's start as an operator runs
them; traces through the readers fleetd and `fleetctl simulate` use. The world is
faked at its edges only: the database (a server stopped by the test), a provider
that is down, the clock.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli.fleetctl import app
from daemon.config import ConfigError, load_config, parse_config
from daemon.demand.errors import DemandInputError
from daemon.demand.request_log import read_trace, scan
from daemon.preflight import check, errors

run = CliRunner().invoke
TPUTS = [[4.0] * 4] * 4  # a fixed MaxTput table: these tests are about input, not the estimator
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _toml(tmp_path: Path, text: str, name: str = "fleet.toml") -> Path:
    p = tmp_path / name
    p.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "fleet.db"}"\n' + text if "[store]" not in text else text)
    return p


def _lines(text: str) -> list[str]:
    return [x for x in text.strip().splitlines() if x.strip()]


# -- 1. values that the daemon cannot run are rejected with key path and range --------------------

@pytest.mark.parametrize("section,key,value,where", [
    ("loop", "tick_interval_s", "inf", "loop.tick_interval_s"),
    ("loop", "misfire_grace_s", "1e20", "loop.misfire_grace_s"),
    ("policy", "budget_per_hour", "inf", "policy.budget_per_hour"),
    ("policy", "drain_s", "inf", "policy.drain_s"),
    ("loop", "history_s", "1e300", "loop.history_s"),
    ("loop", "window_s", "nan", "loop.window_s"),
    ("solver", "time_limit_s", "-1.0", "solver.time_limit_s"),
])
def test_non_finite_and_out_of_range_numbers_name_key_and_range(tmp_path, section, key, value, where):
    p = _toml(tmp_path, f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and where in msg
    assert "<=" in msg and (">=" in msg or "> " in msg), msg  # the allowed range, both ends
    r = run(app, ["config", "check", str(p)])
    assert r.exit_code == 2 and where in r.output and "Traceback" not in r.output


def test_demo_days_that_numpy_cannot_hold_is_rejected(tmp_path):
    # demo_days = 1e9 once made numpy ask for 62.9 TiB.
    p = _toml(tmp_path, '[[services]]\nname = "chat"\n[services.demand]\ndemo_days = 1e9\n')
    with pytest.raises(ConfigError, match=r"services\[0\]\.demand\.demo_days: must be > 0 and <= 366 \(days\)"):
        load_config(p)
    p = _toml(tmp_path, '[[services]]\nname = "chat"\n[services.demand]\ndemo_days = 300.0\ndemo_mean_rps = 100.0\n')
    with pytest.raises(ConfigError, match=r"services\[0\]\.demand: demo_days x demo_mean_rps .* at most 20,000,000"):
        load_config(p)


@pytest.mark.parametrize("snippet,where,got", [
    ('[[services]]\nname = "chat"\nmin_replicas = true\n', "services[0].min_replicas", "true (a boolean)"),
    ('[metrics]\nport = "9465"\n', "metrics.port", "'9465' (a string)"),
    ('[[services]]\nname = "chat"\nmin_replicas = 1.0\n', "services[0].min_replicas", "1.0 (a float)"),
    ('[policy]\nspot = 1\n', "policy.spot", "1 (an integer)"),
    ('[loop]\ntick_interval_s = "60"\n', "loop.tick_interval_s", "'60' (a string)"),
])
def test_strict_types_no_coercion(tmp_path, snippet, where, got):
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, snippet))
    assert where in str(e.value) and got in str(e.value)


def test_empty_gpus_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"services\[0\]\.gpus: List should have at least 1 item"):
        load_config(_toml(tmp_path, '[[services]]\nname = "chat"\ngpus = []\n'))


def test_defaults_and_example_pass_preflight(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert errors(check(load_config(None), "<defaults>")) == []
    r = run(app, ["config", "check", str(Path(__file__).parents[1] / "config.example.toml")])
    assert r.exit_code == 0 and "ok" in r.output


# -- preflight: what the config points at --------------------------------------------------------

def _check_fails(tmp_path, text, key, pattern):
    p = _toml(tmp_path, text)
    r = run(app, ["config", "check", str(p)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    line = next((x for x in _lines(r.output) if f": {key}:" in x), None)
    assert line is not None, r.output
    assert line.startswith(f"error: {p}: {key}:"), line
    import re

    assert re.search(pattern, line), line
    return line


@pytest.mark.parametrize("url,pattern", [
    ("garbage", r"not a database URL; expected sqlite:///PATH"),
    ("mysql://fleet:pw@db/fleet", r"database 'mysql' is not supported"),
    ("postgresql+nodriver://u@h/db", r"unknown driver|not installed"),
    ("postgresql+psycopg:///nohost", r"no host"),
])
def test_store_urls_that_cannot_work(tmp_path, url, pattern):
    line = _check_fails(tmp_path, f'[store]\nurl = "{url}"\n', "store.url", pattern)
    assert ":pw@" not in line


def test_store_url_empty(tmp_path):
    with pytest.raises(ConfigError, match=r"store\.url: String should have at least 1 character"):
        load_config(_toml(tmp_path, '[store]\nurl = ""\n'))


def test_sqlite_store_under_a_regular_file_or_missing_directory(tmp_path):
    (tmp_path / "afile").write_text("x")
    _check_fails(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path}/afile/fleet.db"\n', "store.url",
                 r"under .*afile, which is a regular file")
    _check_fails(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path}/no/such/fleet.db"\n', "store.url",
                 r"does not exist")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all")
    _check_fails(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path}/junk.db"\n', "store.url",
                 r"is not a SQLite database")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any directory: the access check cannot fail")
def test_sqlite_store_in_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        _check_fails(tmp_path, f'[store]\nurl = "sqlite:///{d}/fleet.db"\n', "store.url", r"not writable")
    finally:
        d.chmod(0o700)


def test_missing_offerings_file_and_spot_trace_dir(tmp_path):
    _check_fails(tmp_path, f'[provider.simulated]\nofferings_file = "{tmp_path}/nope.csv"\n',
                 "provider.simulated.offerings_file", r"no such file")
    _check_fails(tmp_path, f'[provider.simulated]\nspot_trace_dir = "{tmp_path}/nope"\n',
                 "provider.simulated.spot_trace_dir", r"not found")


def test_offerings_file_in_the_wrong_format(tmp_path):
    bad = tmp_path / "off.csv"
    header = "cloud,region,zone,instance_type,gpu,gpu_count,on_demand,spot\n"
    for body, pattern in [("aws,us-east-1,,g5.xlarge,A10G,1,inf,\n", r"off.csv:2: on_demand price must be > 0"),
                          ("aws,us-east-1,,g5.xlarge,A10G\n", r"off.csv:2: expected one value per column"),
                          ("aws,us-east-1,,g5.xlarge,A10G,1,nan,\n", r"off.csv:2: on_demand price"),
                          ("", r"no offerings in it")]:
        bad.write_text(header + body)
        _check_fails(tmp_path, f'[provider.simulated]\nofferings_file = "{bad}"\n',
                     "provider.simulated.offerings_file", pattern)
    bad.write_bytes(header.encode() + b"aws,\xe9t\xe9,,g5,A10G,1,1.0,\n")
    _check_fails(tmp_path, f'[provider.simulated]\nofferings_file = "{bad}"\n',
                 "provider.simulated.offerings_file", r"not UTF-8")


def test_corrupt_or_unwritable_simulated_state_file(tmp_path):
    state = tmp_path / "cloud.json"
    for text in ("{not json", "[]", '{"epoch": "2026-01-01T00:00:00", "last": null, "rng": [], "instances": []}'):
        state.write_text(text)
        _check_fails(tmp_path, f'[provider.simulated]\nstate_file = "{state}"\n', "provider.simulated.state_file",
                     r"unreadable simulated-cloud state")
    (tmp_path / "f").write_text("x")
    _check_fails(tmp_path, f'[provider.simulated]\nstate_file = "{tmp_path}/f/cloud.json"\n',
                 "provider.simulated.state_file", r"regular file")


@pytest.mark.parametrize("service,key,pattern", [
    ('gpus = ["A10X"]', "services[0].gpus[0]", r"unknown GPU type 'A10X'"),
    ('gpus = ["A10X"]', "services[0]", r"can get no capacity at all.*A10X: unknown GPU type"),
    ('model = "nobody/unknown-model-7b"\ngpus = ["A10G"]', "services[0]",
     r"can get no capacity at all.*A10G: no capacity"),
    ('gpus = ["V100"]', "services[0]", r"can get no capacity at all.*V100: no"),
])
def test_service_with_no_usable_gpu(tmp_path, service, key, pattern):
    _check_fails(tmp_path, f'[[services]]\nname = "chat"\n{service}\n', key, pattern)


def test_cloud_filter_that_matches_nothing(tmp_path):
    text = '[provider.simulated]\nclouds = ["lambda"]\n[[services]]\nname = "chat"\ngpus = ["L4"]\n'
    _check_fails(tmp_path, text, "services[0]", r"can get no capacity at all.*L4: no offering")
    _check_fails(tmp_path, '[provider.simulated]\nclouds = ["nimbus"]\n', "provider.simulated.clouds[0]",
                 r"'nimbus' is in no row of the offerings table")


def test_demand_paths(tmp_path):
    _check_fails(tmp_path, f'[[services]]\nname = "chat"\n[services.demand]\nkind = "trace"\npath = "{tmp_path}/t.csv"\n',
                 "services[0].demand.path", r"no such file")
    (tmp_path / "t.csv").write_text("hello,world\n1,2\n")
    _check_fails(tmp_path, f'[[services]]\nname = "chat"\n[services.demand]\nkind = "trace"\npath = "{tmp_path}/t.csv"\n',
                 "services[0].demand.path", r"cannot tell the request-log format")
    _check_fails(tmp_path, f'[[services]]\nname = "chat"\n[services.demand]\nkind = "request-log"\n'
                 f'path = "{tmp_path}/nodir/r.jsonl"\n', "services[0].demand.path", r"directory .* does not exist")
    _check_fails(tmp_path, '[[services]]\nname = "chat"\nforecast = {model = "crystal_ball"}\n',
                 "services[0].forecast.model", r"unknown model 'crystal_ball'; allowed: auto, recent_peak")


def test_request_log_that_does_not_exist_yet_is_fine(tmp_path):
    p = _toml(tmp_path, f'[[services]]\nname = "chat"\n[services.demand]\nkind = "request-log"\n'
                        f'path = "{tmp_path}/r.jsonl"\n')
    r = run(app, ["config", "check", str(p)])
    assert r.exit_code == 0, r.output


def test_prometheus_feed_that_does_not_answer_with_connect(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (f'[[services]]\nname = "chat"\n[services.demand]\nkind = "prometheus"\n'
            f'[services.demand.prometheus]\nurl = "http://127.0.0.1:{port}"\n')
    assert run(app, ["config", "check", str(_toml(tmp_path, text))]).exit_code == 0
    r = run(app, ["config", "check", str(_toml(tmp_path, text)), "--connect"])
    assert r.exit_code == 2
    assert "services[0].demand.prometheus.url" in r.output
    assert "Prometheus does not answer" in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions cannot make it unreadable")
def test_unreadable_trace_is_a_clear_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(AZURE + "2023-11-16 18:15:40.0000000,10,20\n")
    p.chmod(0)
    try:
        with pytest.raises(DemandInputError, match=r"t.csv: cannot read: Permission denied"):
            read_trace(p)
        _check_fails(tmp_path, f'[[services]]\nname = "chat"\n[services.demand]\nkind = "trace"\npath = "{p}"\n',
                     "services[0].demand.path", r"not readable")
    finally:
        p.chmod(0o600)


# -- fleetd refuses in one line ---------------------------------------------------------------------

@pytest.mark.parametrize("text,key", [
    ('[store]\nurl = "mysql://u:pw@h/db"\n', "store.url"),
    ('[provider.simulated]\nofferings_file = "/nonexistent/off.csv"\n', "provider.simulated.offerings_file"),
    ('[[services]]\nname = "chat"\ngpus = ["A10X"]\n', "services[0]"),
])
def test_fleetd_refuses_to_start_with_one_line(tmp_path, capsys, text, key):
    from daemon.cli.fleetd import main

    p = _toml(tmp_path, text)
    assert main(["--config", str(p), "--log-level", "error"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"fleetd: {p}: ") and key in err[0], err
    assert not (tmp_path / "fleet.db").exists()  # refused before it touched anything


def test_connect_reports_an_unreachable_server_masked(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql+psycopg://fleet:hunter2-secret@127.0.0.1:{port}/fleet"
    p = _toml(tmp_path, f'[store]\nurl = "{url}"\n')
    r = run(app, ["config", "check", str(p)])
    assert r.exit_code == 0, r.output  # without --connect the server is not asked
    r = run(app, ["config", "check", str(p), "--connect"])
    assert r.exit_code == 2 and "cannot connect" in r.output and "hunter2" not in r.output
    assert "fleet:***@127.0.0.1" in r.output and len(_lines(r.output)) == 1
    from daemon.cli.fleetd import main

    assert main(["--config", str(p), "--log-level", "error"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "cannot connect" in err[0] and "hunter2" not in err[0]


# -- 4. every command that connects: one line, password masked ---------------------------------------

COMMANDS = [["db", "upgrade"], ["db", "current"], ["status"], ["audit"], ["events"], ["decisions", "show", "1"],
            ["decisions", "list"], ["pause"], ["resume"], ["plan"], ["simulate", "--demo"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.parametrize("url", ["garbage", "mysql://u:hunter2-secret@h/db",
                                 "postgresql+psycopg://u:hunter2-secret@127.0.0.1:1/db", "sqlite:////etc/passwd"])
def test_database_errors_are_one_line_in_every_command(cmd, url):
    r = CliRunner().invoke(app, cmd + ["--db", url])
    assert r.exit_code == 2, r.output
    out = _lines(r.output)
    assert len(out) == 1 and out[0].startswith("error: "), out
    assert "hunter2" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)


def test_forecast_show_database_error_is_one_line(monkeypatch):
    monkeypatch.setenv("FLEET_DB", "postgresql+psycopg://u:hunter2-secret@127.0.0.1:1/db")
    r = CliRunner().invoke(app, ["forecast", "show", "--service", "chat"])
    assert r.exit_code == 2 and len(_lines(r.output)) == 1 and "hunter2" not in r.output


# -- 2. a service that loses all capacity at run time: an alert every tick ---------------------------

def test_no_capacity_at_run_time_alerts_every_tick(store, clock):
    from daemon.domain import CapacityTable
    from daemon.loop.tick import run_tick
    from daemon.store.schema import Alert
    from daemon.wiring import build_system

    # The config passed preflight with an AWS offering; at run time the provider's catalog has
    # lost it (a catalog change): here the simulated cloud offers only Lambda, which has no L4.
    cfg = parse_config({"services": [{"name": "chat", "gpus": ["L4"], "min_replicas": 2,
                                      "forecast": {"model": "recent_peak"}}],
                        "provider": {"simulated": {"clouds": ["lambda"]}},
                        "capacity": [{"model": "meta-llama/Llama-2-7b-hf", "gpu": "L4", "tputs": TPUTS}]})
    system = build_system(cfg, clock=clock, store=store, sources={})
    assert isinstance(system.capacity, CapacityTable)
    loop = system.loop()
    for _ in range(3):
        result = run_tick(loop)
        assert result.outcome == "applied"
        clock.advance(60)
    with store.session() as s:
        alerts = s.query(Alert).all()
    starved = [a for a in alerts if a.kind == "no_capacity"]
    assert len(starved) == 3 and all(a.severity == "critical" and a.service == "chat" for a in starved)
    assert "no offering of its GPU types (L4)" in starved[0].message
    assert not [a for a in alerts if a.kind == "binding_limit" and "min_replicas" in a.message]


# -- 3. traces and feeds ---------------------------------------------------------------------------

def test_iso_timestamp_keeps_fraction_and_offset(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("timestamp,input_tokens,output_tokens\n2023-11-16T18:15:48.5+05:00,10,20\n")
    tr = read_trace(p)
    assert tr.start == datetime(2023, 11, 16, 13, 15, 48, 500000, tzinfo=timezone.utc)


@pytest.mark.parametrize("row,field", [
    ("2023-11-16 18:15:48.0000000,1e23,5", "ContextTokens"),
    ("2023-11-16 18:15:48.0000000,inf,5", "ContextTokens"),
    ("2023-11-16 18:15:48.0000000,5,nan", "GeneratedTokens"),
    ("3023-11-16 18:15:48.0000000,5,5", "TIMESTAMP"),
    ("9999-12-31 23:59:59.9999999,5,5", "TIMESTAMP"),
    ("2023-11-16 18:15:48.0000000,1" + "0" * 400 + ",5", "ContextTokens"),
])
def test_bad_numbers_are_skipped_rows_with_file_and_line(tmp_path, row, field):
    p = tmp_path / "t.csv"
    p.write_text(AZURE + "2023-11-16 18:15:40.0000000,10,20\n" + row + "\n")
    tr = read_trace(p, on_bad_row="skip")
    assert len(tr) == 1 and len(tr.bad_rows) == 1
    assert tr.bad_rows[0].startswith(f"{p}:3: field {field!r}")
    with pytest.raises(DemandInputError, match=rf"{p}:3: field '{field}'"):
        read_trace(p, on_bad_row="reject")


def test_jsonl_rows_that_once_escaped(tmp_path):
    p = tmp_path / "t.jsonl"
    good = '{"timestamp": 1700000000000, "input_length": 10, "output_length": 5}\n'
    rows = ['{"timestamp": 1' + "0" * 400 + ', "input_length": 1, "output_length": 1}',  # float(int) overflows
            '{"timestamp": 1700000000000, "input_length": 1' + "0" * 400 + ', "output_length": 1}',
            "[" * 100000 + "]" * 100000,  # nested past the recursion limit
            '{"timestamp": [1], "input_length": {}, "output_length": 1}',
            '{"timestamp": "2023-11-16T18:15:48.5+05:00", "input_length": 1, "output_length": 1}']
    p.write_text(good + "\n".join(rows) + "\n")
    tr = read_trace(p)
    assert len(tr) == 2 and len(tr.bad_rows) == 4
    assert [b.split(":")[1] for b in tr.bad_rows] == ["2", "3", "4", "5"]


def test_megabyte_lines_and_nul_bytes(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(AZURE + "2023-11-16 18:15:40.0000000,10,20\n" + "x" * 200_000 + ",1,1\n"
                 + "2023-11-16 18:15:41.0000000,10," + "9" * (2 << 20) + "\n")
    tr = read_trace(p)
    assert len(tr) == 1 and len(tr.bad_rows) == 2
    assert "not CSV: field larger than field limit" in tr.bad_rows[0] and ":3:" in tr.bad_rows[0]
    assert "longer than 1,048,576" in tr.bad_rows[1] and ":4:" in tr.bad_rows[1]
    b = tmp_path / "b.csv"
    b.write_bytes(b"\x00\x01\x02garbage\n" * 10)
    with pytest.raises(DemandInputError, match=r"b.csv:1: cannot tell the request-log format: .*NUL"):
        read_trace(b)


def test_huge_file_of_garbage_stops_early(tmp_path):
    p = tmp_path / "g.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"timestamp": 1700000000000, "input_length": 10, "output_length": 5}\n')
        f.write(b"{garbage\n" * 2_000_000)  # 18 MB of bad rows
    with pytest.raises(DemandInputError, match=r"more than 1000 malformed rows in its first 1002 lines"):
        read_trace(p)


@pytest.mark.parametrize("suffix,opener", [(".xz", lzma.compress), (".gz", gzip.compress), (".bz2", bz2.compress)])
def test_truncated_and_fake_compressed_files(tmp_path, suffix, opener):
    body = (AZURE + "".join(f"2023-11-16 18:15:{s:02d}.0000000,10,20\n" for s in range(60))).encode() * 50
    full = opener(body)
    p = tmp_path / f"t.csv{suffix}"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DemandInputError, match=rf"t.csv{suffix}: cannot read: not a valid or complete"):
        read_trace(p)
    p.write_bytes(body)  # named .xz/.gz/.bz2, but plain text
    with pytest.raises(DemandInputError, match=rf"t.csv{suffix}: cannot read"):
        read_trace(p)


def test_empty_header_only_vanished_and_directory(tmp_path):
    e = tmp_path / "e.csv"
    e.write_text("")
    with pytest.raises(DemandInputError, match="no valid requests"):
        read_trace(e)
    e.write_text(AZURE)
    with pytest.raises(DemandInputError, match="no valid requests"):
        read_trace(e)
    with pytest.raises(DemandInputError, match="trace file not found"):
        read_trace(tmp_path / "gone.csv")
    with pytest.raises(DemandInputError, match="cannot read"):
        scan(tmp_path)  # a directory where a file was expected (the file vanished, a directory took its name)


def test_trace_spanning_centuries_is_an_error_not_a_replay_of_millions_of_ticks(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("timestamp,input_tokens,output_tokens\n1700000000,1,1\n1700000060,1,1\n4000000000,1,1\n")
    with pytest.raises(DemandInputError, match=r"spans 26,620 days .* at line 4\), more than 400"):
        read_trace(p)


def test_tail_makes_progress_past_a_line_longer_than_one_read(tmp_path):
    from daemon.demand.tail import RequestLogTail
    from daemon.domain import BucketGrid

    p = tmp_path / "r.jsonl"
    t0 = 1_700_000_000
    p.write_text(json.dumps({"timestamp": t0 * 1000, "input_length": 1, "output_length": 1}) + "\n"
                 + "x" * 5000 + "\n"
                 + json.dumps({"timestamp": (t0 + 1) * 1000, "input_length": 1, "output_length": 1}) + "\n")
    tail = RequestLogTail("chat", p, BucketGrid((0, 256), (0, 64)), 60.0, max_bytes=1024)
    now = datetime.fromtimestamp(t0 + 3600, tz=timezone.utc)
    offsets = []
    for _ in range(12):
        poll = tail.poll(now)
        tail.commit(poll)
        offsets.append(poll.cursor["offset"])
        if poll.cursor["offset"] >= p.stat().st_size:
            break
    assert offsets[-1] == p.stat().st_size, offsets  # never stuck at one offset
    assert all(b > a for a, b in zip(offsets, offsets[1:]))


def test_spot_traces_that_once_escaped(tmp_path):
    from providers.spot_traces import SpotTraceError, load_trace

    cases = ['{"metadata": {"gap_seconds": NaN}, "data": [1]}', '[1, 2]', '{"metadata": {"gap_seconds": 60}, '
             '"data": [true]}', '{"metadata": {"gap_seconds": 60}, "data": [NaN]}',
             '{"metadata": {"gap_seconds": 60}, "data": 5}', "[" * 100000]
    for k, text in enumerate(cases):
        p = tmp_path / f"us-east-1a_{k}.json"
        p.write_text(text)
        with pytest.raises(SpotTraceError, match=str(p.name)):
            load_trace(p)
    p = tmp_path / "us-east-1a_x.json"
    p.write_bytes(b'{"metadata": {"gap_seconds": 60}, "data": [1, \xe9]}')
    with pytest.raises(SpotTraceError, match="not JSON"):
        load_trace(p)


# -- simulate exits non-zero when most ticks failed ------------------------------------------------

class _DownProvider:
    """A simulated cloud whose API goes down after the first calls (a fault at the edge)."""

    def __init__(self, inner, ok_calls: int = 2):
        self.inner, self.ok = inner, ok_calls
        self.name = inner.name

    def list(self):
        self.ok -= 1
        if self.ok < 0:
            raise ConnectionError("provider API unreachable")
        return self.inner.list()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_simulate_exits_non_zero_when_most_ticks_failed(tmp_path, monkeypatch):
    import daemon.simulate as sim

    real = sim.build_provider
    monkeypatch.setattr(sim, "build_provider", lambda cfg, clock: _DownProvider(real(cfg, clock)))
    cfg = _toml(tmp_path, '[[services]]\nname = "chat"\ngpus = ["A10G"]\nforecast = {model = "recent_peak"}\n'
                          '[services.demand]\ndemo_days = 0.02\n'
                          f'[[capacity]]\nmodel = "meta-llama/Llama-2-7b-hf"\ngpu = "A10G"\ntputs = {TPUTS}\n')
    r = CliRunner().invoke(app, ["simulate", "--config", str(cfg), "--db", f"sqlite:///{tmp_path}/sim.db", "--json"])
    assert r.exit_code == 1, r.output
    summary = json.loads(_lines(r.stdout)[0])
    assert summary["failed_ticks"] > summary["ticks"] / 2
    assert f"{summary['failed_ticks']} of {summary['ticks']} ticks failed" in r.output
    assert "ConnectionError: provider API unreachable" in r.output
    monkeypatch.setattr(sim, "build_provider", real)
    r = CliRunner().invoke(app, ["simulate", "--config", str(cfg), "--db", f"sqlite:///{tmp_path}/sim2.db", "--json"])
    assert r.exit_code == 0, r.output


# -- 4. at run time: the database goes away and comes back ---------------------------------------

def test_store_guard_backs_off_logs_and_alerts_once_back(store, clock):
    from daemon.loop.store_guard import StoreGuard
    from daemon.loop.tick import TickResult
    from daemon.store.schema import Alert

    answers = []  # what the database answers each probe: None = up
    guard = StoreGuard("postgresql+psycopg://fleet:hunter2@db/fleet", lambda: answers.pop(0), clock, 60.0, 300.0)
    ran = []

    def tick(loop):
        ran.append(clock())
        return TickResult(1, clock(), "failed" if len(ran) == 1 else "applied", {}, None, (), {})

    class L:
        pass

    loop = L()
    loop.store = store
    answers.append("OperationalError: connection refused")  # the probe after the failed tick
    out = guard.tick(loop, tick)
    assert out.outcome == "failed" and guard.down_since == clock()
    waits = []
    for _ in range(12):
        clock.advance(60)
        before = guard.next_try
        if clock() >= before:
            answers.append("OperationalError: connection refused")
        r = guard.tick(loop, tick)
        assert r.outcome == "store_unreachable" and "***" in r.error and "hunter2" not in r.error
        if clock() >= before:
            waits.append((guard.next_try - clock()).total_seconds())
    assert waits[:4] == [120.0, 240.0, 300.0, 300.0]  # doubling from one tick, at most max_backoff_s
    assert len(ran) == 1  # no tick ran while it was down
    clock.advance(300)
    answers.append(None)
    assert guard.tick(loop, tick).outcome == "applied" and len(ran) == 2 and guard.down_since is None
    with store.session() as s:
        a = s.query(Alert).filter(Alert.kind == "store_unreachable").one()
    assert a.severity == "critical" and "unreachable for 1020 s" in a.message and "hunter2" not in a.message


def test_fleetd_rides_out_a_postgres_outage(tmp_path):
    """fleetd on a PostgreSQL store that is stopped for a while and started again: it keeps
    running, logs the outage critically in one line per tick, and records how long it lasted."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    from tests.pg_support import PostgresServer, pg_bindir, skip_reason

    why = skip_reason()
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="fleet-pg-outage-"))
    server = PostgresServer(pg_bindir(), root)
    server.start()
    proc = None
    try:
        name = server.create_database()
        url = server.url(name)
        cfg = _toml(tmp_path, f'[store]\nurl = "{url}"\n[loop]\ntick_interval_s = 1.0\nwindow_s = 1.0\n'
                    '[metrics]\nenabled = false\n[[services]]\nname = "chat"\ngpus = ["A10G"]\n'
                    'forecast = {model = "recent_peak"}\n[services.demand]\ndemo_days = 0.02\n'
                    f'[[capacity]]\nmodel = "meta-llama/Llama-2-7b-hf"\ngpu = "A10G"\ntputs = {TPUTS}\n')
        log = open(tmp_path / "fleetd.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.fleetd", "--config", str(cfg), "--log-json"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        import psycopg

        # Stop the server only once fleetd has migrated and ticked (a loaded machine is slow to start).
        deadline = time.monotonic() + 90
        ticked = False
        while time.monotonic() < deadline and not ticked:
            time.sleep(1)
            with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as c:
                ticked = bool(c.execute("SELECT to_regclass('decisions') IS NOT NULL").fetchone()[0]
                              and c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
        assert ticked, (tmp_path / "fleetd.log").read_text()[-3000:]
        time.sleep(2)
        server.stop()
        down = time.monotonic()
        time.sleep(8)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={server.port} -c unix_socket_directories={root} "
                "-c fsync=off")
        r = server._run(str(server.bindir / "pg_ctl"), "-D", str(server.data), "-l", str(root / "server.log"),
                        "-o", opts, "-w", "-t", "60", "start")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 60
        found = None
        while time.monotonic() < deadline and found is None:
            time.sleep(1)
            with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as c:
                found = c.execute("SELECT message FROM alerts WHERE kind = 'store_unreachable'").fetchone()
        assert proc.poll() is None  # still running
        assert found is not None, (tmp_path / "fleetd.log").read_text()[-3000:]
        assert "unreachable for" in found[0] and "s3cret" not in found[0]
        out = (tmp_path / "fleetd.log").read_text()
        crit = [json.loads(x) for x in out.splitlines() if '"store_unreachable"' in x]
        assert crit and all(c["level"] == "critical" and "***" in c["url"] for c in crit)
        assert "s3cret" not in out
        assert time.monotonic() - down > 8
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
