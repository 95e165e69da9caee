"""Bring the running HAProxy in step with a desired state: observe, plan (pure), apply, persist.

`Gateway.sync(desired)` is the one call the loop makes after each applied tick (and the
end-to-end test's driver). It

1. observes HAProxy through the Runtime API (backends, servers with their state and open
   connections, the maps it loaded): 3 reads plus one per map;
2. plans the fewest changes (`plan_sync`, a pure function of config, observed and desired):
   - servers of replicas that serve and HAProxy lacks: `add server` (a new server starts in
     maintenance and takes no default-server settings, so each gets its full arguments),
     `enable health`, `enable server`; a known one with a new address: `set server addr`;
     one in drain or maintenance that serves again: `set server state ready`;
   - bucket maps (request bytes -> input bucket) only when the fitted edges moved by more
     than `gateway.bucket_map_change`, weight maps only when a share changed; each swapped
     atomically (`prepare map`, `add map @v`, `commit map @v`);
   - draining replicas: `set server state drain` (no new request; streams in flight finish);
   - replicas gone: maintenance, `shutdown sessions server` if connections are left (the
     machine is gone, they are dead anyway), `del server` once none is left;
   - servers HAProxy has in our backends that the desired state does not name: maintenance,
     then deleted once idle (not cut: they may be serving someone's stream).
   New capacity goes in before the maps move traffic to it, and traffic moves away before
   servers are drained or removed, so no request is sent to a pool with nothing to serve.
3. applies it, and writes the same state to the state dir (maps, backends.cfg) so that a
   restarted HAProxy comes back routing as before. Files are written even when HAProxy does
   not answer: it then starts in the desired state.

The result (`SyncResult`) says what changed, and which draining replicas still hold
connections (`drain_busy`: hold their termination) or hold none (`drained`: safe to terminate).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from daemon.config import Config
from daemon.gateway.bytes_per_token import BytesPerToken, edges_moved
from daemon.gateway.layout import Layout, backend_name, server_name, split_backend
from daemon.gateway.maps import (MapRow, bucket_rows, byte_edges_of, effective_shares, map_file_text,
                                 parse_map_rows, planned_shares, rows_from_byte_edges, shares_of_rows, weight_rows)
from daemon.gateway.render import ServerLine, backends_of, render_backends_cfg, server_args, usage_lua
from daemon.gateway.runtime import RuntimeApiError, RuntimeClient
from daemon.gateway.state import Action, DesiredState, Observed, ObservedServer


class EndpointError(ValueError):
    pass


def resolve_endpoint(url: str) -> tuple[str, int]:
    """(IP, port) of a replica's base URL. Names are resolved here: HAProxy does not resolve
    the address of a server added at run time ("init-addr none")."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise EndpointError(f"endpoint {url!r}: {e}") from None
    if u.scheme != "http":
        raise EndpointError(f"endpoint {url!r}: only http:// replicas are supported by the gateway")
    if not u.hostname:
        raise EndpointError(f"endpoint {url!r}: no host")
    port = port or 80
    try:
        return str(ipaddress.ip_address(u.hostname)), port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(u.hostname, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise EndpointError(f"endpoint {url!r}: cannot resolve {u.hostname}: {e}") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # IPv4 first
    return infos[0][4][0], port


def _addr_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class ServerCommand:
    line: str
    expect: str | None  # "" = an empty answer is success; else a substring of the good answer
    kind: str  # add | enable-health | enable | addr | ready | drain | maint | shutdown | del
    target: str  # backend/server
    replica: str | None = None


@dataclass(frozen=True)
class MapSwap:
    path: str
    rows: tuple[MapRow, ...]
    service: str
    kind: str  # buckets | weights


Step = ServerCommand | MapSwap


@dataclass(frozen=True)
class SyncPlan:
    steps: tuple[Step, ...]
    files: Mapping[Path, str]
    drain_busy: Mapping[str, int]
    drained: tuple[str, ...]
    pending_removal: tuple[str, ...]
    shares: Mapping[str, Mapping[int, Mapping[str, float]]]  # service -> bucket -> pool -> share in effect
    notes: tuple[str, ...]
    errors: tuple[str, ...]
    restart_needed: bool


@dataclass(frozen=True)
class SyncResult:
    """What one sync changed, and what the loop needs to know about drains."""

    commands: tuple[str, ...]  # sent, in order (map swaps as "swap map PATH (N rows)")
    added: tuple[str, ...]  # backend/server
    readdressed: tuple[str, ...]
    enabled: tuple[str, ...]  # back to ready from drain or maintenance
    drained_now: tuple[str, ...]  # put into drain by this sync
    removed: tuple[str, ...]
    maps_rewritten: tuple[str, ...]
    drain_busy: Mapping[str, int]  # replica name -> connections still open: hold its termination
    drained: tuple[str, ...]  # draining replicas without connections: safe to terminate
    pending_removal: tuple[str, ...]  # backend/server still holding connections, deleted by a later sync
    shares: Mapping[str, Mapping[int, Mapping[str, float]]]
    files: tuple[str, ...]
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    restart_needed: bool = False
    reachable: bool = True

    @property
    def changed(self) -> bool:
        return bool(self.commands)

    def summary(self) -> dict:
        return {
            "commands": len(self.commands), "added": list(self.added), "removed": list(self.removed),
            "drained_now": list(self.drained_now), "enabled": list(self.enabled),
            "maps_rewritten": list(self.maps_rewritten), "drain_busy": dict(self.drain_busy),
            "drained": list(self.drained), "pending_removal": list(self.pending_removal),
            "errors": list(self.errors), "restart_needed": self.restart_needed, "reachable": self.reachable,
        }


def _cmd(line: str, kind: str, target: str, replica: str | None = None, expect: str | None = "") -> ServerCommand:
    return ServerCommand(line, expect, kind, target, replica)


def plan_sync(cfg: Config, observed: Observed, desired: DesiredState,
              addresses: Mapping[str, tuple[str, int] | Exception], at: datetime | None = None) -> SyncPlan:
    """The changes that bring `observed` to `desired` (see the module doc); pure.

    `addresses` maps each replica's name to its endpoint's resolved (IP, port), or the error
    that kept it from resolving. `at` only stamps backends.cfg.
    """
    gw = cfg.gateway
    lay = Layout.at(gw.state_dir)
    grid = cfg.buckets.grid()
    args = server_args(gw)
    managed = {b: (s, p) for b, s, p in backends_of(cfg)}
    services = [s.name for s in cfg.services]
    first: list[ServerCommand] = []  # capacity in
    later: list[ServerCommand] = []  # capacity out, after the maps moved traffic
    last: list[ServerCommand] = []  # deletions
    notes: list[str] = []
    errors: list[str] = []
    restart = False
    serving: dict[str, set[str]] = {s: set() for s in services}
    file_servers: dict[str, list[ServerLine]] = {}
    drain_busy: dict[str, int] = {}
    drained: list[str] = []
    pending: list[str] = []
    named: set[tuple[str, str]] = set()

    def remove(obs: ObservedServer, replica: str | None, force: bool) -> None:
        target = f"{obs.backend}/{obs.name}"
        if obs.admin != "maint":
            later.append(_cmd(f"set server {target} state maint", "maint", target, replica))
        if obs.connections == 0:
            last.append(_cmd(f"del server {target}", "del", target, replica, expect="Server deleted"))
        else:
            if force:
                later.append(_cmd(f"shutdown sessions server {target}", "shutdown", target, replica))
            pending.append(target)

    for r in desired.replicas:
        if r.service not in serving:
            notes.append(f"{r.name}: service {r.service!r} is not configured; ignored")
            continue
        be, srv = backend_name(r.service, r.pool), server_name(r.name)
        if (be, srv) in named:
            errors.append(f"{r.name}: named twice in the desired state; the first entry counts")
            continue
        named.add((be, srv))
        act = r.action
        if be not in managed or (observed.reachable and be not in observed.backends):
            if act is not Action.REMOVE and act is not Action.ABSENT:
                errors.append(f"{r.name}: no backend {be} for pool {r.pool} in the running HAProxy "
                              "(gateway.gpu_counts or the services changed): re-render haproxy.cfg and restart it")
                restart = True
            continue
        target = f"{be}/{srv}"
        obs = observed.servers.get((be, srv))
        if act is Action.SERVE:
            addr = addresses.get(r.name)
            if addr is None or isinstance(addr, Exception):
                errors.append(f"{r.name}: {addr or 'no address resolved'}")
                if obs is not None and obs.admin == "ready":
                    file_servers.setdefault(be, []).append(ServerLine(srv, obs.address, True))
                    serving[r.service].add(r.pool)
                continue
            ip, port = addr
            text = _addr_text(ip, port)
            file_servers.setdefault(be, []).append(ServerLine(srv, text, True))
            if obs is None:
                first.append(_cmd(f"add server {target} {text} {args}", "add", target, r.name,
                                  expect="New server registered"))
                first.append(_cmd(f"enable health {target}", "enable-health", target, r.name))
                first.append(_cmd(f"enable server {target}", "enable", target, r.name))
                serving[r.service].add(r.pool)  # a new server starts up; checks take it out if not
                continue
            if (obs.addr, obs.port) != (ip, port):
                first.append(_cmd(f"set server {target} addr {ip} port {port}", "addr", target, r.name,
                                  expect="changed"))
            if obs.admin != "ready":
                first.append(_cmd(f"set server {target} state ready", "ready", target, r.name))
            if obs.up or obs.admin != "ready":
                serving[r.service].add(r.pool)
        elif act is Action.ABSENT:
            if obs is not None and obs.admin == "ready":
                later.append(_cmd(f"set server {target} state maint", "maint", target, r.name))
        elif act is Action.DRAIN:
            if not observed.reachable:  # connections unknown: neither busy nor drained
                addr = addresses.get(r.name)
                if isinstance(addr, tuple):
                    file_servers.setdefault(be, []).append(ServerLine(srv, _addr_text(*addr), False))
                continue
            if obs is None:
                drained.append(r.name)
                continue
            file_servers.setdefault(be, []).append(ServerLine(srv, obs.address, False))
            if obs.admin == "ready":
                later.append(_cmd(f"set server {target} state drain", "drain", target, r.name))
            if obs.connections > 0:
                drain_busy[r.name] = obs.connections
            else:
                drained.append(r.name)
        else:  # REMOVE
            if obs is not None:
                remove(obs, r.name, force=True)
    for key, obs in sorted(observed.servers.items()):
        if key not in named and obs.backend in managed:
            notes.append(f"{obs.backend}/{obs.name}: not in the desired state; taken out")
            remove(obs, None, force=False)

    swaps: list[MapSwap] = []
    files: dict[Path, str] = {}
    shares_out: dict[str, dict[int, dict[str, float]]] = {}
    for s in services:
        # bucket map: rewritten only when the edges moved
        bpath, wpath = lay.bucket_map(s), lay.weight_map(s)
        b_obs = observed.maps.get(str(bpath))
        w_obs = observed.maps.get(str(wpath))
        if observed.reachable and (str(bpath) not in observed.maps or b_obs is None
                                   or str(wpath) not in observed.maps or w_obs is None):
            errors.append(f"{s}: the running HAProxy does not load {bpath.name} / {wpath.name}: "
                          "re-render haproxy.cfg (fleetctl gateway config) and restart it")
            restart = True
        current = byte_edges_of(b_obs) if b_obs else None
        if current is not None and len(current) != grid.n_input:
            current = None
        fit = desired.bytes_per_token.get(s)
        if fit is not None:
            new = fit.byte_edges(grid)
            b_rows = rows_from_byte_edges(new) if edges_moved(current, new, gw.bucket_map_change) \
                else rows_from_byte_edges(current)
        elif current is not None:
            b_rows = rows_from_byte_edges(current)
        else:
            fit = BytesPerToken.guess(gw.bytes_per_token)
            b_rows = bucket_rows(grid, fit)
        if b_obs is None or set(b_obs) != set(b_rows):
            swaps.append(MapSwap(str(bpath), b_rows, s, "buckets"))
        how = (f"fitted from {fit.samples} requests: {fit.overhead_bytes:.0f} B + {fit.low:.3f} B/token "
               f"(q={fit.quantile}; median {fit.median:.3f})" if fit is not None and fit.samples
               else f"guess: {gw.bytes_per_token} B/token" if fit is not None else "kept")
        files[bpath] = map_file_text(b_rows, f"service {s}: request bytes -> input bucket ({how})")

        planned, n1 = planned_shares(s, desired.routes)
        usable = {p for p in serving[s] if backend_name(s, p) in managed}
        eff, n2 = effective_shares(grid.n_input, planned, usable)
        notes += n1 + [f"{s}: {n}" for n in n2]
        eff = {i: {p: w for p, w in row.items() if backend_name(s, p) in managed} for i, row in eff.items()}
        w_rows = weight_rows(s, eff)
        shares_out[s] = {i: {split_backend(b)[1]: w for b, w in row.items()}
                         for i, row in shares_of_rows(w_rows).items()}
        if w_obs is None or set(w_obs) != set(w_rows):
            swaps.append(MapSwap(str(wpath), w_rows, s, "weights"))
        files[wpath] = map_file_text(w_rows, f"service {s}: bucket x 100 + rand(100) -> backend")

    files[lay.backends_cfg] = render_backends_cfg(cfg, file_servers, at)
    buckets_first = [m for m in swaps if m.kind == "buckets"] + [m for m in swaps if m.kind == "weights"]
    return SyncPlan(
        steps=tuple(first) + tuple(buckets_first) + tuple(later) + tuple(last),
        files=files, drain_busy=drain_busy, drained=tuple(drained), pending_removal=tuple(pending),
        shares=shares_out, notes=tuple(notes), errors=tuple(errors), restart_needed=restart,
    )


def write_atomic(path: Path, text: str) -> None:
    """Temp file + rename: HAProxy (re)starting never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Gateway:
    """The running HAProxy of one configuration."""

    def __init__(self, cfg: Config, client: RuntimeClient | None = None,
                 resolve: Callable[[str], tuple[str, int]] = resolve_endpoint,
                 clock: Callable[[], datetime] | None = None):
        self.cfg = cfg
        self.layout = Layout.at(cfg.gateway.state_dir)
        self.client = client or RuntimeClient(cfg.gateway.socket)
        self.resolve = resolve
        self.clock = clock

    def map_paths(self) -> list[str]:
        return [str(p) for s in self.cfg.services for p in (self.layout.bucket_map(s.name), self.layout.weight_map(s.name))]

    def init_state_dir(self) -> list[Path]:
        """usage.lua (always refreshed), and the maps and backends.cfg HAProxy needs to start, where missing."""
        lay, grid = self.layout, self.cfg.buckets.grid()
        written = []
        write_atomic(lay.lua, usage_lua())
        written.append(lay.lua)
        guess = BytesPerToken.guess(self.cfg.gateway.bytes_per_token)
        for s in self.cfg.services:
            for path, text in ((lay.bucket_map(s.name), map_file_text(bucket_rows(grid, guess),
                                                                       f"service {s.name}: guess")),
                               (lay.weight_map(s.name), map_file_text((), f"service {s.name}: no routes yet"))):
                if not path.exists():
                    write_atomic(path, text)
                    written.append(path)
        if not lay.backends_cfg.exists():
            write_atomic(lay.backends_cfg, render_backends_cfg(self.cfg))
            written.append(lay.backends_cfg)
        return written

    def observe(self) -> Observed:
        """The running HAProxy; when it does not answer, the maps on disk stand in (reachable=False)."""
        try:
            return self.client.observe(self.map_paths())
        except RuntimeApiError as e:
            maps = {}
            for p in self.map_paths():
                try:
                    maps[p] = parse_map_rows(Path(p).read_text())
                except (OSError, ValueError):
                    maps[p] = None
            return Observed(frozenset(), {}, maps, reachable=False, error=str(e))

    def plan(self, desired: DesiredState, observed: Observed | None = None) -> SyncPlan:
        observed = observed if observed is not None else self.observe()
        addresses: dict[str, tuple[str, int] | Exception] = {}
        for r in desired.replicas:
            if r.action in (Action.SERVE, Action.DRAIN) and r.endpoint:
                try:
                    addresses[r.name] = self.resolve(r.endpoint)
                except EndpointError as e:
                    addresses[r.name] = e
        return plan_sync(self.cfg, observed, desired, addresses, self.clock() if self.clock else None)

    def sync(self, desired: DesiredState) -> SyncResult:
        observed = self.observe()
        plan = self.plan(desired, observed)
        sent: list[str] = []
        errors = list(plan.errors)
        done: dict[str, list[str]] = {k: [] for k in ("add", "addr", "ready", "drain", "del")}
        maps: list[str] = []
        pending = list(plan.pending_removal)
        reachable = observed.reachable
        if not reachable:
            errors.append(f"gateway not updated: {observed.error}; the state files are written for its next start")
        else:
            failed_adds: set[str] = set()
            for step in plan.steps:
                try:
                    if isinstance(step, MapSwap):
                        self.client.swap_map(step.path, step.rows)
                        sent.append(f"swap map {step.path} ({len(step.rows)} rows)")
                        maps.append(step.path)
                        continue
                    if step.target in failed_adds:
                        continue  # its add failed: enabling it would fail too
                    self.client.run(step.line, expect=step.expect)
                    sent.append(step.line)
                    if step.kind in done:
                        done[step.kind].append(step.target)
                except RuntimeApiError as e:
                    msg = str(e)
                    if isinstance(step, ServerCommand) and step.kind == "del" and "connections" in msg:
                        pending.append(step.target)  # a connection appeared since we looked: next sync
                        continue
                    if "cannot reach" in msg:
                        errors.append(msg)
                        reachable = False
                        break
                    errors.append(msg)
                    if isinstance(step, ServerCommand) and step.kind == "add":
                        failed_adds.add(step.target)
        written = []
        for path, text in plan.files.items():
            try:
                write_atomic(path, text)
                written.append(str(path))
            except OSError as e:
                errors.append(f"{path}: cannot write: {e.strerror}")
        return SyncResult(
            commands=tuple(sent), added=tuple(done["add"]), readdressed=tuple(done["addr"]),
            enabled=tuple(done["ready"]), drained_now=tuple(done["drain"]), removed=tuple(done["del"]),
            maps_rewritten=tuple(maps), drain_busy=dict(plan.drain_busy), drained=plan.drained,
            pending_removal=tuple(dict.fromkeys(pending)), shares=plan.shares, files=tuple(written),
            notes=plan.notes, errors=tuple(errors), restart_needed=plan.restart_needed, reachable=reachable,
        )
