"""The gateway's pure parts: config rendering, maps, the sync's command diff, the log parser,
bytes-per-token fitting. The real HAProxy runs in tests/test_gateway_e2e.py."""

import json
import math
import random
import shutil
import subprocess

import pytest

from daemon.config import ConfigError, parse_config
from daemon.domain import BucketGrid, Route
from daemon.gateway.bytes_per_token import (INT_MAX, BytesPerToken, BytesPerTokenTracker, edges_moved,
                                            fit_bytes_per_token)
from daemon.gateway.layout import Layout, backend_name, split_backend
from daemon.gateway.logformat import GatewayLogError, bytes_token_pairs, parse_line, read_lines
from daemon.gateway.maps import (MapRow, bucket_rows, byte_edges_of, effective_shares, map_file_text,
                                 parse_map_rows, planned_shares, shares_of_rows, slots, weight_rows)
from daemon.gateway.render import LOG_FORMAT, render_backends_cfg, render_haproxy_cfg, server_args
from daemon.gateway.runtime import parse_servers_conn, parse_servers_state
from daemon.gateway.state import DesiredState, Observed, ObservedServer, Replica, action_for
from daemon.gateway.sync import Gateway, MapSwap, ServerCommand, plan_sync


def _cfg(tmp_path, **gw):
    return parse_config({
        "services": [{"name": "chat", "gpus": ["A10G", "L4"]}],
        "buckets": {"input_edges": [0, 256, 1024, 4096], "output_edges": [0, 64, 4096]},
        "gateway": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "admin.sock"),
                    "gpu_counts": [1], **gw},
    })


# -- rendering -----------------------------------------------------------------------


def test_rendered_config_uses_the_routing_mechanisms(tmp_path):
    cfg = _cfg(tmp_path)
    text = render_haproxy_cfg(cfg)
    lay = Layout.at(tmp_path / "state")
    assert f"req.body_size,map_int({lay.bucket_map('chat')},2)" in text  # top bucket (index 2) by default
    assert "rand(100),add(txn.b100)" in text
    assert f"map_int({lay.weight_map('chat')},no_route)" in text
    assert "req.hdr(X-Fleet-Service),lower" in text
    assert "option http-no-delay" in text and "option http-buffer-request" in text
    assert "filter lua.usage" in text
    assert "int(2) if !{ req.hdr_cnt(content-length) gt 0 }" in text  # chunked: top bucket
    backends = render_backends_cfg(cfg)
    for b in ("chat__A10Gx1", "chat__L4x1"):
        assert f"backend {b}\n    balance leastconn" in backends
    assert backends.count("retry-on conn-failure empty-response response-timeout") == 2
    assert backends.count("option redispatch 1") == 2
    assert "observe layer4 error-limit 1 on-error mark-down" in server_args(cfg.gateway)


def test_path_mode_strips_the_service_and_default_service(tmp_path):
    cfg = _cfg(tmp_path, service_by="path", default_service="chat")
    text = render_haproxy_cfg(cfg)
    assert "path,field(2,/),lower" in text
    assert "set-path %[path,regsub(^/[^/]*/?,/)] if known_service" in text
    assert "str(chat) if !known_service" in text
    assert "str(chat) if !{ var(txn.svc) -m found }" in render_haproxy_cfg(_cfg(tmp_path, default_service="chat"))
    with pytest.raises(ConfigError, match="default_service"):
        _cfg(tmp_path, default_service="nope")


def test_log_format_is_json_once_haproxy_fills_it():
    # each %x becomes a number or a string inside quotes; a stand-in for every field must parse
    import re

    sample = re.sub(r"%\[[^\]]*\]|%[A-Za-z]+(\.%ms)?", "1", LOG_FORMAT)
    obj = json.loads(sample)
    assert {"ts", "service", "bucket", "backend", "server", "status", "in_tokens", "out_tokens"} <= set(obj)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (scripts/deps-haproxy.sh, as root)")
def test_rendered_config_is_valid_for_the_installed_haproxy(tmp_path):
    for mode in ("header", "path"):
        cfg = _cfg(tmp_path, service_by=mode, stats_listen="127.0.0.1:18404")
        Gateway(cfg).init_state_dir()
        main = tmp_path / "haproxy.cfg"
        main.write_text(render_haproxy_cfg(cfg))
        p = subprocess.run(["haproxy", "-c", "-f", str(main), "-f", str(Layout.at(tmp_path / "state").backends_cfg)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


# -- maps ------------------------------------------------------------------------------


def test_bucket_rows_cover_all_sizes_contiguously():
    grid = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64))
    rows = bucket_rows(grid, BytesPerToken(100.0, 4.0, 3.0, 500, 0.02))
    assert [(r.lo, r.hi, r.value) for r in rows] == [
        (0, 100 + 768 - 1, "0"), (868, 100 + 3072 - 1, "1"), (3172, 100 + 12288 - 1, "2"), (12388, INT_MAX, "3")]
    assert byte_edges_of(rows) == (0, 868, 3172, 12388)
    assert parse_map_rows(map_file_text(rows, "a header\nof two lines")) == rows
    assert byte_edges_of(rows[:-1]) is None  # not ending at INT_MAX: not ours


def test_slots_are_proportional_sum_to_100_and_keep_small_shares():
    assert slots({"a": 0.7, "b": 0.3}) == {"a": 70, "b": 30}
    s = slots({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert sum(s.values()) == 100 and sorted(s.values()) == [33, 33, 34]
    assert slots({"a": 0.999, "b": 0.001}) == {"a": 99, "b": 1}  # 0.1% still gets its slot
    assert slots({"a": 0.0}) == {}
    r = random.Random(3)
    for _ in range(200):
        w = {f"p{k}": r.random() for k in range(r.randint(1, 7))}
        s = slots(w)
        assert sum(s.values()) == 100
        tot = sum(w.values())
        for p, n in s.items():
            assert abs(n - 100 * w[p] / tot) <= 1.0 + 1e-9


def test_weight_rows_encode_the_shares():
    rows = weight_rows("chat", {0: {"A10Gx1": 0.25, "L4x1": 0.75}, 2: {"L4x1": 1.0}})
    assert [r.line() for r in rows] == ["0:24 chat__A10Gx1", "25:99 chat__L4x1", "200:299 chat__L4x1"]
    assert shares_of_rows(rows) == {0: {"chat__A10Gx1": 0.25, "chat__L4x1": 0.75}, 2: {"chat__L4x1": 1.0}}


def test_effective_shares_skip_pools_without_serving_replicas():
    planned = {0: {"A": 0.5, "B": 0.5}, 1: {"B": 1.0}}
    eff, notes = effective_shares(3, planned, {"A"})
    assert eff[0] == {"A": 1.0}
    assert eff[1] == {"A": 1.0}  # B serves nothing: bucket 1 borrows bucket 0's pools
    assert eff[2] == {"A": 1.0}  # no route planned: the nearest bucket with one
    assert any("no serving replica in B" in n for n in notes)
    eff, _ = effective_shares(3, planned, {"A", "B"})
    assert eff[0] == {"A": 0.5, "B": 0.5} and eff[1] == {"B": 1.0} and eff[2] == {"B": 1.0}
    # upward first: bucket 0 with nothing planned takes bucket 1's pools
    assert effective_shares(2, {1: {"B": 1.0}}, {"A", "B"})[0][0] == {"B": 1.0}
    # nothing serves at all: the planned table stays (503 either way until a replica is up)
    assert effective_shares(3, planned, set())[0] == {0: {"A": 0.5, "B": 0.5}, 1: {"B": 1.0}}


def test_cell_routes_are_summed_per_input_bucket():
    routes = [Route("chat", 0, "A", 0.3, output_bucket=0), Route("chat", 0, "A", 0.2, output_bucket=1),
              Route("chat", 0, "B", 0.5, output_bucket=1), Route("code", 0, "C", 1.0)]
    shares, notes = planned_shares("chat", routes)
    assert shares == {0: {"A": 0.5, "B": 0.5}} and notes


def test_backend_names_split_back():
    assert split_backend(backend_name("chat", "A100-80GBx2")) == ("chat", "A100-80GBx2")
    assert split_backend("no_route") is None


# -- the sync's command diff -------------------------------------------------------------


ROUTES = (Route("chat", 0, "A10Gx1", 0.6), Route("chat", 0, "L4x1", 0.4),
          Route("chat", 1, "L4x1", 1.0), Route("chat", 2, "L4x1", 1.0))
ALL_BACKENDS = frozenset({"chat__A10Gx1", "chat__L4x1", "no_route"})


def _observed(cfg, servers=(), bucket_rows_=None, weight_rows_=None, reachable=True):
    lay = Layout.at(cfg.gateway.state_dir)
    if bucket_rows_ is None:
        bucket_rows_ = bucket_rows(cfg.buckets.grid(), BytesPerToken.guess(cfg.gateway.bytes_per_token))
    maps = {str(lay.bucket_map("chat")): tuple(bucket_rows_), str(lay.weight_map("chat")): tuple(weight_rows_ or ())}
    return Observed(ALL_BACKENDS if reachable else frozenset(),
                    {(s.backend, s.name): s for s in servers}, maps, reachable=reachable)


def _srv(backend, name, port, admin=0, conns=0, op=2):
    return ObservedServer(backend, name, "127.0.0.1", port, op, admin, conns)


def _addr(replicas):
    return {r.name: ("127.0.0.1", int(r.endpoint.rsplit(":", 1)[1])) for r in replicas if r.endpoint}


def _lines(plan):
    return [s.line if isinstance(s, ServerCommand) else f"swap {s.kind}" for s in plan.steps]


R1 = Replica("chat", "A10Gx1", "r1", "http://127.0.0.1:9001", "running")
R2 = Replica("chat", "L4x1", "r2", "http://127.0.0.1:9002", "running")


def test_lifecycle_states_map_to_actions():
    assert [action_for(s) for s in ("running", "provisioning", "requested", "draining", "terminating", "preempted", "gone")] \
        == ["serve", "absent", "absent", "drain", "remove", "remove", "remove"]
    assert Replica("chat", "L4x1", "x", None, "running").action == "absent"  # no endpoint yet
    with pytest.raises(ValueError, match="unknown replica state"):
        action_for("sleeping")


def test_from_nothing_adds_servers_then_routes(tmp_path):
    cfg = _cfg(tmp_path)
    boot = Replica("chat", "L4x1", "r3", "http://127.0.0.1:9003", "provisioning")
    desired = DesiredState(ROUTES, (R1, R2, boot))
    plan = plan_sync(cfg, _observed(cfg), desired, _addr([R1, R2, boot]))
    args = server_args(cfg.gateway)
    assert _lines(plan) == [
        f"add server chat__A10Gx1/r1 127.0.0.1:9001 {args}", "enable health chat__A10Gx1/r1", "enable server chat__A10Gx1/r1",
        f"add server chat__L4x1/r2 127.0.0.1:9002 {args}", "enable health chat__L4x1/r2", "enable server chat__L4x1/r2",
        "swap weights",  # the bucket map HAProxy has is the configured guess already: not rewritten
    ]
    assert plan.shares["chat"] == {0: {"A10Gx1": 0.6, "L4x1": 0.4}, 1: {"L4x1": 1.0}, 2: {"L4x1": 1.0}}
    files = {p.name: t for p, t in plan.files.items()}
    assert "server r1 127.0.0.1:9001" in files["backends.cfg"] and "r3" not in files["backends.cfg"]
    assert "0:59 chat__A10Gx1" in files["weights-chat.map"]


def test_in_step_means_no_command(tmp_path):
    cfg = _cfg(tmp_path)
    desired = DesiredState(ROUTES, (R1, R2))
    first = plan_sync(cfg, _observed(cfg), desired, _addr([R1, R2]))
    w = next(s for s in first.steps if isinstance(s, MapSwap)).rows
    obs = _observed(cfg, [_srv("chat__A10Gx1", "r1", 9001), _srv("chat__L4x1", "r2", 9002)], weight_rows_=w)
    again = plan_sync(cfg, obs, desired, _addr([R1, R2]))
    assert again.steps == () and again.errors == ()


def test_drain_then_remove_only_without_connections(tmp_path):
    cfg = _cfg(tmp_path)
    r2b = Replica("chat", "L4x1", "r2b", "http://127.0.0.1:9004", "running")
    w = weight_rows("chat", {0: {"A10Gx1": 0.6, "L4x1": 0.4}, 1: {"L4x1": 1.0}, 2: {"L4x1": 1.0}})
    base = [_srv("chat__A10Gx1", "r1", 9001), _srv("chat__L4x1", "r2", 9002, conns=3), _srv("chat__L4x1", "r2b", 9004)]
    draining = Replica("chat", "L4x1", "r2", "http://127.0.0.1:9002", "draining")
    plan = plan_sync(cfg, _observed(cfg, base, weight_rows_=w), DesiredState(ROUTES, (R1, draining, r2b)),
                     _addr([R1, draining, r2b]))
    assert _lines(plan) == ["set server chat__L4x1/r2 state drain"]  # L4 still serves (r2b): same weights
    assert plan.drain_busy == {"r2": 3} and plan.drained == ()
    assert "server r2 127.0.0.1:9002 check" in plan.files[Layout.at(cfg.gateway.state_dir).backends_cfg]
    # drained: nothing more to send, reported safe to terminate
    base[1] = _srv("chat__L4x1", "r2", 9002, admin=0x08, conns=0)
    plan = plan_sync(cfg, _observed(cfg, base, weight_rows_=w), DesiredState(ROUTES, (R1, draining, r2b)),
                     _addr([R1, draining, r2b]))
    assert plan.steps == () and plan.drained == ("r2",)
    # gone while streams are open (a preempted machine): out, sessions cut, deleted by a later sync
    gone = Replica("chat", "L4x1", "r2", None, "preempted")
    base[1] = _srv("chat__L4x1", "r2", 9002, admin=0x08, conns=2)
    plan = plan_sync(cfg, _observed(cfg, base, weight_rows_=w), DesiredState(ROUTES, (R1, gone, r2b)), _addr([R1, r2b]))
    assert _lines(plan) == ["set server chat__L4x1/r2 state maint", "shutdown sessions server chat__L4x1/r2"]
    assert plan.pending_removal == ("chat__L4x1/r2",)
    base[1] = _srv("chat__L4x1", "r2", 9002, admin=0x01, conns=0)
    plan = plan_sync(cfg, _observed(cfg, base, weight_rows_=w), DesiredState(ROUTES, (R1, gone, r2b)), _addr([R1, r2b]))
    assert _lines(plan) == ["del server chat__L4x1/r2"]
    assert "r2 " not in plan.files[Layout.at(cfg.gateway.state_dir).backends_cfg].replace("r2b", "")


def test_last_replica_of_a_pool_draining_moves_its_share_first(tmp_path):
    cfg = _cfg(tmp_path)
    w = weight_rows("chat", {0: {"A10Gx1": 0.6, "L4x1": 0.4}, 1: {"L4x1": 1.0}, 2: {"L4x1": 1.0}})
    obs = _observed(cfg, [_srv("chat__A10Gx1", "r1", 9001), _srv("chat__L4x1", "r2", 9002, conns=1)], weight_rows_=w)
    draining = Replica("chat", "L4x1", "r2", "http://127.0.0.1:9002", "draining")
    plan = plan_sync(cfg, obs, DesiredState(ROUTES, (R1, draining)), _addr([R1, draining]))
    assert _lines(plan) == ["swap weights", "set server chat__L4x1/r2 state drain"]  # traffic away, then drain
    assert plan.shares["chat"] == {0: {"A10Gx1": 1.0}, 1: {"A10Gx1": 1.0}, 2: {"A10Gx1": 1.0}}


def test_unknown_servers_are_taken_out_without_cutting_streams(tmp_path):
    cfg = _cfg(tmp_path)
    obs = _observed(cfg, [_srv("chat__A10Gx1", "r1", 9001), _srv("chat__A10Gx1", "old", 9100, conns=1)])
    plan = plan_sync(cfg, obs, DesiredState(ROUTES, (R1,)), _addr([R1]))
    lines = _lines(plan)
    assert "set server chat__A10Gx1/old state maint" in lines
    assert not any("shutdown" in x or "del server" in x for x in lines)
    assert plan.pending_removal == ("chat__A10Gx1/old",)


def test_address_change_and_reenable(tmp_path):
    cfg = _cfg(tmp_path)
    obs = _observed(cfg, [_srv("chat__A10Gx1", "r1", 9999, admin=0x08)])
    plan = plan_sync(cfg, obs, DesiredState(ROUTES, (R1,)), _addr([R1]))
    assert _lines(plan)[:2] == ["set server chat__A10Gx1/r1 addr 127.0.0.1 port 9001",
                                "set server chat__A10Gx1/r1 state ready"]


def test_a_pool_without_backend_needs_a_restart(tmp_path):
    cfg = _cfg(tmp_path)
    big = Replica("chat", "L4x8", "r8", "http://127.0.0.1:9008", "running")  # gpu_counts = [1]
    plan = plan_sync(cfg, _observed(cfg), DesiredState(ROUTES, (big,)), _addr([big]))
    assert plan.restart_needed and any("no backend chat__L4x8" in e for e in plan.errors)
    assert not any("r8" in x for x in _lines(plan))


def test_bucket_map_rewritten_only_when_the_fit_moves(tmp_path):
    cfg = _cfg(tmp_path, bucket_map_change=0.05)
    grid = cfg.buckets.grid()
    current = bucket_rows(grid, BytesPerToken(50.0, 4.0, 3.5, 500, 0.02))
    near = BytesPerToken(52.0, 4.0, 3.55, 800, 0.02)  # edges move ~1.5%
    far = BytesPerToken(50.0, 4.0, 2.8, 800, 0.02)  # edges move 20%
    for fit, rewritten in ((near, False), (far, True), (None, False)):
        plan = plan_sync(cfg, _observed(cfg, bucket_rows_=current), DesiredState((), (), {"chat": fit} if fit else {}), {})
        swaps = [s for s in plan.steps if isinstance(s, MapSwap) and s.kind == "buckets"]
        assert bool(swaps) == rewritten, fit
    assert edges_moved(None, (0, 1), 0.05) and edges_moved((0, 10), (0, 10, 20), 0.05)


def test_unreachable_haproxy_still_gets_its_files_but_no_drain_verdict(tmp_path):
    cfg = _cfg(tmp_path)
    draining = Replica("chat", "L4x1", "r2", "http://127.0.0.1:9002", "draining")
    plan = plan_sync(cfg, _observed(cfg, reachable=False), DesiredState(ROUTES, (R1, draining)), _addr([R1, draining]))
    assert plan.drained == () and plan.drain_busy == {}
    cfg_text = plan.files[Layout.at(cfg.gateway.state_dir).backends_cfg]
    assert "server r1 127.0.0.1:9001" in cfg_text and "server r2 127.0.0.1:9002" in cfg_text and " disabled" in cfg_text


def test_sync_writes_files_when_haproxy_is_down(tmp_path):
    cfg = _cfg(tmp_path)
    gw = Gateway(cfg)
    gw.init_state_dir()
    res = gw.sync(DesiredState(ROUTES, (R1, R2)))
    assert not res.reachable and res.commands == ()
    assert any("cannot reach" in e for e in res.errors)
    lay = Layout.at(cfg.gateway.state_dir)
    assert "chat__L4x1" in lay.weight_map("chat").read_text()
    assert "server r2 127.0.0.1:9002" in lay.backends_cfg.read_text()


# -- Runtime API answers (as HAProxy 2.6 prints them) -------------------------------------


def test_parse_runtime_answers():
    state = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
             "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
             "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
             "srv_check_addr srv_agent_addr srv_agent_port\n"
             "4 be_a 1 r1 127.0.0.1 2 8 1 1 2 15 3 4 6 0 0 0 - 38727 - 0 0 - - 0\n\n")
    rows = parse_servers_state(state)
    assert rows[0]["be_name"] == "be_a" and rows[0]["srv_admin_state"] == "8" and rows[0]["srv_port"] == "38727"
    conn = ("# bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb safe_nb idle_lim "
            "idle_cur idle_per_thr[2]\nbe_a/r1 4/1 127.0.0.1 38727 - 0 3 3 3 0 0 0 0\n\n")
    assert parse_servers_conn(conn) == {("be_a", "r1"): 3}
    assert parse_map_rows("0x564a4d1419d0 0:49 be_a\n0x564a4d05af80 50:99 be_b\n") == (
        MapRow(0, 49, "be_a"), MapRow(50, 99, "be_b"))
    with pytest.raises(ValueError, match="line 1"):
        parse_map_rows("just-one-word\n")
    assert ObservedServer("b", "s", "::1", 80, 2, 0x08, 0).address == "[::1]:80"
    assert ObservedServer("b", "s", "h", 80, 2, 0x08, 0).admin == "drain"
    assert ObservedServer("b", "s", "h", 80, 0, 0x01 | 0x08, 0).admin == "maint"


# -- the log parser ------------------------------------------------------------------------


LINE = ('{"v":1,"ts":1796116451.228,"request_id":"abc","service":"chat","bucket":1,"backend":"chat__A10Gx1","server":"r2",'
        '"status":200,"req_bytes":2113,"resp_bytes":5230,"in_tokens":512,"out_tokens":128,"tw":0,"tc":1,'
        '"tr":17,"ta":1052,"retries":"+1","term":"--"}')


def test_parse_a_request_line():
    r = parse_line(LINE, 7)
    assert (r.timestamp, r.service, r.bucket, r.pool, r.server, r.status) == (1796116451.228, "chat", 1, "A10Gx1", "r2", 200)
    assert r.request_id == "abc"
    assert (r.request_bytes, r.input_tokens, r.output_tokens, r.retries, r.line) == (2113, 512, 128, 1, 7)
    assert r.redispatched and not parse_line(LINE.replace('"+1"', '"2"')).redispatched
    assert (r.queue_ms, r.connect_ms, r.response_ms, r.total_ms) == (0, 1, 17, 1052) and r.completed
    # a syslog relay's prefix is fine; HAProxy's own messages are not records
    assert parse_line("<134>Mar  2 12:00:00 gw haproxy[42]: " + LINE).input_tokens == 512
    assert parse_line("Server chat__A10Gx1/r2 is DOWN, reason: Layer4 connection problem") is None
    assert parse_line("") is None


def test_parse_lines_without_usage_or_server():
    r = parse_line(LINE.replace('"in_tokens":512', '"in_tokens":null').replace('"server":"r2"', '"server":"<NOSRV>"')
                   .replace('"backend":"chat__A10Gx1"', '"backend":"no_route"').replace('"tc":1', '"tc":-1')
                   .replace('"status":200', '"status":503'))
    assert r.input_tokens is None and r.server is None and r.pool is None and r.connect_ms is None
    assert not r.completed
    assert parse_line(LINE.replace('"term":"--"', '"term":"SD"')).completed is False  # stream cut by the replica


@pytest.mark.parametrize("bad, message", [
    (LINE[:-5], "not valid JSON"),
    (LINE.replace('"status":200', '"status":"ok"'), "'status' must be an integer"),
    (LINE.replace('"in_tokens":512', '"in_tokens":-3'), "'in_tokens' must be >= 0"),
    (LINE.replace(',"bucket":1', ''), "missing field 'bucket'"),
    (LINE.replace('"+1"', '"x"'), "'retries' must be a count"),
    (LINE.replace('{"v":1', '{"v":9'), "version 9"),
])
def test_malformed_lines_are_named(bad, message):
    with pytest.raises(GatewayLogError, match=message) as e:
        parse_line(bad, 42, "gw.log")
    assert "gw.log: line 42" in str(e.value)


def test_read_lines_skip_or_raise():
    lines = [LINE, "[NOTICE] something", LINE[:30], LINE]
    errors = []
    recs = list(read_lines(lines, "gw.log", on_bad="skip", errors=errors))
    assert [r.line for r in recs] == [1, 4] and len(errors) == 1 and "line 3" in str(errors[0])
    with pytest.raises(GatewayLogError, match="line 3"):
        list(read_lines(lines, "gw.log"))
    assert list(bytes_token_pairs(recs, "chat")) == [(2113, 512), (2113, 512)]


# -- bytes per token --------------------------------------------------------------------------


def _synthetic(n, seed, overhead=180.0, median=4.2, sigma=0.15):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        t = int(math.exp(r.uniform(math.log(20), math.log(6000))))
        ratio = median * math.exp(r.gauss(0, sigma))
        out.append((int(overhead + ratio * t), t))
    return out


def test_fit_recovers_overhead_and_places_edges_conservatively():
    train, test = _synthetic(2000, 1), _synthetic(20000, 2)
    fit = fit_bytes_per_token(train, quantile=0.02, min_samples=200)
    assert fit is not None and fit.samples == 2000
    assert abs(fit.median - 4.2) < 0.1 and fit.low < fit.median
    assert 120 < fit.overhead_bytes < 240
    grid = BucketGrid((0, 256, 1024, 4096), (0, 64))
    edges = fit.byte_edges(grid)
    below = above = 0
    for b, t in test:
        true = grid.locate(t, 0)[0]
        got = max(k for k, e in enumerate(edges) if b >= e)
        below += got < true
        above += got > true
    # under-bucketing is what costs requests; it stays near the chosen 2% of requests near an edge,
    # far below 2% of all requests; over-bucketing is the price paid for it
    assert below / len(test) < 0.02
    assert above > below


def test_fit_needs_enough_samples_and_ignores_empty_pairs():
    assert fit_bytes_per_token([(100, 10)] * 50, min_samples=200) is None
    pairs = [(0, 10), (100, 0), (None, 5)] * 100 + _synthetic(300, 3)
    assert fit_bytes_per_token(pairs, min_samples=200).samples == 300
    # constant token count: no intercept to learn, still a usable ratio
    fit = fit_bytes_per_token([(400 + k % 7, 100) for k in range(300)], min_samples=200)
    assert fit.overhead_bytes == 0.0 and 3.9 < fit.low <= fit.median < 4.1


def test_tracker_keeps_a_window_per_service():
    t = BytesPerTokenTracker(quantile=0.02, min_samples=200, window=500)
    t.add("chat", _synthetic(150, 4))
    assert t.fits() == {}
    t.add("chat", _synthetic(150, 5))
    t.add("code", _synthetic(1000, 6, median=3.0))
    fits = t.fits()
    assert fits["chat"].samples == 300 and fits["code"].samples == 500  # the window keeps the last 500
    assert abs(fits["code"].median - 3.0) < 0.1


def test_guess_edges_are_increasing():
    grid = BucketGrid((0, 1, 2, 3), (0, 1))
    assert BytesPerToken.guess(0.1).byte_edges(grid) == (0, 1, 2)


# -- fleetctl gateway -------------------------------------------------------------------------


def _toml(tmp_path):
    p = tmp_path / "fleet.toml"
    p.write_text('[[services]]\nname = "chat"\ngpus = ["A10G"]\n'
                 f'[gateway]\nstate_dir = "{tmp_path / "state"}"\nsocket = "{tmp_path / "no.sock"}"\ngpu_counts = [1, 2]\n')
    return p


def test_fleetctl_gateway_config_renders_and_prepares(tmp_path):
    from typer.testing import CliRunner

    from daemon.cli.fleetctl import app

    toml = _toml(tmp_path)
    out = CliRunner().invoke(app, ["gateway", "config", "-c", str(toml)])
    assert out.exit_code == 0 and "frontend gateway" in out.stdout and "buckets-chat.map" in out.stdout
    assert not (tmp_path / "state").exists()  # stdout only: nothing written
    res = CliRunner().invoke(app, ["gateway", "config", "-c", str(toml), "--out", str(tmp_path / "haproxy.cfg")]
                             + (["--check"] if shutil.which("haproxy") else []))
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["backends.cfg", "buckets-chat.map", "usage.lua", "weights-chat.map"]
    assert "backend chat__A10Gx2" in (tmp_path / "state" / "backends.cfg").read_text()


def test_fleetctl_gateway_status_says_when_haproxy_is_not_there(tmp_path):
    from typer.testing import CliRunner

    from daemon.cli.fleetctl import app

    res = CliRunner().invoke(app, ["gateway", "status", "-c", str(_toml(tmp_path))])
    assert res.exit_code == 1 and "cannot reach HAProxy's Runtime API" in res.output
