"""haproxy.cfg and backends.cfg for a service set: pure text from the configuration.

haproxy.cfg (what an operator deploys; `fleetctl gateway config`) holds the global section,
the defaults and the one frontend. Per request the frontend:

1. names the service, from a header or the first path segment (stripped), else 404;
2. looks the request size (`req.body_size`: the Content-Length, so nothing is buffered)
   up in the service's bucket map (`map_int`, byte ranges -> input bucket); a request
   without a Content-Length (chunked) goes to the top bucket, the conservative side;
3. draws `bucket x 100 + rand(100)` and looks it up in the service's weight map (ranges ->
   backend): the plan's share of each pool, in 1% steps, swapped atomically by the sync;
4. passes the response through a Lua filter (usage.lua) that copies vLLM's `usage` token
   counts into variables, and logs one JSON line (daemon/gateway/logformat.py reads it).

backends.cfg (rewritten by each sync, under the state dir) holds one backend per
(service, pool): `balance leastconn`; L7 retries on another replica (`retry-on conn-failure
empty-response response-timeout`, `option redispatch 1`) for a replica that refused, died
before answering or stayed silent; `observe layer4 error-limit 1 on-error mark-down` on
each server, because leastconn would otherwise keep choosing a dead replica (it holds no
connections); health checks on the replica's health path. Its servers are those the sync
keeps in the running HAProxy (added and removed there at run time, without reloads), so a
restarted HAProxy starts with the same servers; a draining one is written `disabled`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Iterable, Mapping

from daemon.config import Config, GatewayConfig
from daemon.gateway.layout import NO_ROUTE_BACKEND, Layout, backend_name

LOG_VERSION = 1

# One JSON object per request. Numeric fields HAProxy may not have (no bucket: 404; no usage:
# error or a server without usage) default to null, strings come through the json converter.
# %Ts.%ms: accept time; %Tw queue, %Tc connect, %Tr response headers, %Ta total (ms, -1: none);
# %rc retries, as a string: HAProxy writes "+1" when the retry went to another server
# (redispatch); %ts termination state (HAProxy's two letters, "--" for a clean end).
LOG_FORMAT = (
    '{"v":' + str(LOG_VERSION) + ','
    '"ts":%Ts.%ms,'
    '"request_id":"%[var(txn.rid,-),json(utf8s)]",'
    '"service":"%[var(txn.svc,-),json(utf8s)]",'
    '"bucket":%[var(txn.bucket,null)],'
    '"backend":"%b",'
    '"server":"%s",'
    '"status":%ST,'
    '"req_bytes":%[var(txn.body,null)],'
    '"resp_bytes":%B,'
    '"in_tokens":%[var(txn.in_tok,null)],'
    '"out_tokens":%[var(txn.out_tok,null)],'
    '"tw":%Tw,"tc":%Tc,"tr":%Tr,"ta":%Ta,'
    '"retries":"%rc",'
    '"term":"%ts"}'
)


def pools_of(cfg: Config, service: str) -> list[str]:
    """Pools a service may be planned on: each allowed GPU type x each configured GPU count."""
    svc = next(s for s in cfg.services if s.name == service)
    return [f"{gpu}x{n}" for gpu in svc.gpus for n in cfg.gateway.gpu_counts]


def backends_of(cfg: Config) -> list[tuple[str, str, str]]:
    """(backend, service, pool) for every backend the rendered configuration declares."""
    return [(backend_name(s.name, p), s.name, p) for s in cfg.services for p in pools_of(cfg, s.name)]


def _ms(seconds: float) -> str:
    ms = max(1, int(round(seconds * 1000)))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def server_args(gw: GatewayConfig) -> str:
    """Arguments of each server line and `add server` (dynamic servers take no default-server)."""
    return (f"check inter {_ms(gw.health_interval_s)} fall {gw.health_fall} rise {gw.health_rise} "
            "observe layer4 error-limit 1 on-error mark-down")


def usage_lua() -> str:
    return resources.files("daemon.gateway").joinpath("usage.lua").read_text()


def _json_error(status: int, message: str, kind: str) -> str:
    # vLLM's error object shape, so clients parse the gateway's own refusals the same way
    return ('{"object":"error","message":"' + message + '","type":"' + kind + '","param":null,"code":'
            + str(status) + '}')


def render_haproxy_cfg(cfg: Config, generated_by: str = "fleetctl gateway config") -> str:
    gw = cfg.gateway
    lay = Layout.at(gw.state_dir)
    grid = cfg.buckets.grid()
    top = grid.n_input - 1
    names = [s.name for s in cfg.services]
    out = [
        f"# HAProxy in front of a gpufleet fleet; rendered by `{generated_by}` for service(s) {', '.join(names)}.",
        f"# Start: haproxy -f THIS_FILE -f {lay.backends_cfg}",
        f"# The daemon keeps {lay.state_dir} (maps, backends.cfg) and the running HAProxy in step through",
        f"# the Runtime API socket {gw.socket}; do not edit those by hand.",
        "global",
        f"    maxconn {gw.maxconn}",
        f"    stats socket {gw.socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        # L7 retries copy the request into one buffer; larger requests are never retried.
        f"    tune.bufsize {gw.buffer_bytes}",
        f"    lua-load-per-thread {lay.lua}",
        f"    log {gw.log} format raw daemon",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        # Without it HAProxy lets the kernel coalesce small writes, and each stream's first
        # token reaches the client about 200 ms late (measured here: 0.22 s vs 0.02 s direct).
        "    option http-no-delay",
        # Wait for the whole request body before choosing a server. Without it HAProxy 2.6 keeps
        # no complete copy of a request with a body, and a replica that took one and died before
        # answering costs it (502, not retried; measured here with SIGKILLed replicas).
        "    option http-buffer-request",
        f"    timeout connect {_ms(gw.connect_timeout_s)}",
        f"    timeout client {_ms(gw.client_timeout_s)}",
        f"    timeout server {_ms(gw.server_timeout_s)}",
        f"    timeout queue {_ms(gw.queue_timeout_s)}",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 30s",
        "",
        "frontend gateway",
        f"    bind {gw.listen}",
        "    filter lua.usage",
        f"    log-format '{LOG_FORMAT}'",
        f"    acl known_service var(txn.svc) -m str {' '.join(names)}",
    ]
    if gw.service_by == "header":
        out.append(f"    http-request set-var(txn.svc) req.hdr({gw.service_header}),lower")
    else:
        out += [
            "    http-request set-var(txn.svc) path,field(2,/),lower",
            # /chat/v1/completions -> /v1/completions for the replica
            "    http-request set-path %[path,regsub(^/[^/]*/?,/)] if known_service",
        ]
    if gw.default_service:
        # header: only a request without the header (a misspelt service stays a 404);
        # path: a first segment that is no service (/v1/...) is the default service's path
        cond = "!{ var(txn.svc) -m found }" if gw.service_by == "header" else "!known_service"
        out.append(f"    http-request set-var(txn.svc) str({gw.default_service}) if {cond}")
    out += [
        "    http-request return status 404 content-type application/json string '"
        + _json_error(404, "no such service", "NotFoundError") + "' if !known_service",
        "    http-request set-var(txn.body) req.body_size",
        "    http-request set-var(txn.rid) req.hdr(x-request-id)",  # the client's id, for correlation
    ]
    for s in names:
        out.append(f"    http-request set-var(txn.bucket) req.body_size,map_int({lay.bucket_map(s)},{top}) "
                   f"if {{ var(txn.svc) -m str {s} }}")
    out += [
        f"    http-request set-var(txn.bucket) int({top}) if !{{ req.hdr_cnt(content-length) gt 0 }}",
        "    http-request set-var(txn.b100) var(txn.bucket),mul(100)",
        "    http-request set-var(txn.wkey) rand(100),add(txn.b100)",
    ]
    for s in names:
        out.append(f"    use_backend %[var(txn.wkey),map_int({lay.weight_map(s)},{NO_ROUTE_BACKEND})] "
                   f"if {{ var(txn.svc) -m str {s} }}")
    out += [
        f"    default_backend {NO_ROUTE_BACKEND}",
        "",
        f"backend {NO_ROUTE_BACKEND}",
        "    http-request return status 503 content-type application/json string '"
        + _json_error(503, "no replica serves this service now", "ServiceUnavailableError") + "'",
    ]
    if gw.stats_listen:
        out += [
            "",
            "frontend stats",
            f"    bind {gw.stats_listen}",
            "    no log",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    stats enable",
            "    stats uri /",
            "    stats refresh 10s",
        ]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ServerLine:
    """A server as backends.cfg writes it."""

    name: str
    address: str  # ip:port
    enabled: bool = True  # False: written `disabled` (draining: no new requests after a restart)


def render_backends_cfg(cfg: Config, servers: Mapping[str, Iterable[ServerLine]] | None = None,
                        at: datetime | None = None) -> str:
    gw = cfg.gateway
    servers = servers or {}
    args = server_args(gw)
    stamp = f" at {at.isoformat(timespec='seconds')}" if at else ""
    out = [f"# Written by the gpufleet gateway sync{stamp}: rewritten by each sync, do not edit.",
           "# One backend per (service, pool); the servers are those the sync keeps in the running HAProxy."]
    for backend, service, pool in backends_of(cfg):
        out += [
            "",
            f"backend {backend}",
            "    balance leastconn",
            f"    option httpchk GET {gw.health_path}",
            "    http-check expect status 200",
            f"    retries {gw.retries}",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response response-timeout",
        ]
        for srv in sorted(servers.get(backend, ()), key=lambda s: s.name):
            out.append(f"    server {srv.name} {srv.address} {args}" + ("" if srv.enabled else " disabled"))
    return "\n".join(out) + "\n"
