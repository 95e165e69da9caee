"""`fleetctl gateway`: the HAProxy in front of the fleet.

    fleetctl gateway config [--config F] [--out haproxy.cfg] [--check]
    fleetctl gateway status [--config F] [--json]

`config` renders haproxy.cfg for the configured services, bucket grid and [gateway] section
(stdout, or --out FILE, which also prepares gateway.state_dir: usage.lua, and the maps and
backends.cfg HAProxy needs to start, where missing). --check runs `haproxy -c` on the result.
`status` asks the running HAProxy (Runtime API) for each service's bucket map, the routing
shares in effect and the servers per pool with their state and open connections.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The HAProxy gateway in front of the fleet: render its config, show its state.",
                  no_args_is_help=True)


def _load(config: Optional[Path]):
    from daemon.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("config")
def config_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="fleet TOML (default: built-in defaults)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write haproxy.cfg here and prepare gateway.state_dir"),
    check: bool = typer.Option(False, "--check", help="validate the result with `haproxy -c`"),
) -> None:
    """Render haproxy.cfg for the configured services (routing by size bucket, weighted pools)."""
    from daemon.gateway.layout import Layout
    from daemon.gateway.render import render_haproxy_cfg
    from daemon.gateway.sync import Gateway, write_atomic

    cfg = _load(config)
    text = render_haproxy_cfg(cfg)
    lay = Layout.at(cfg.gateway.state_dir)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            write_atomic(out, text)
            written = Gateway(cfg).init_state_dir()
        except OSError as e:
            typer.echo(f"error: cannot write {e.filename}: {e.strerror}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"wrote {out}; {lay.state_dir}: {', '.join(p.name for p in written)}", err=True)
        typer.echo(f"start: {cfg.gateway.haproxy} -f {out} -f {lay.backends_cfg}", err=True)
    if check:
        _check(cfg, text, out, lay)


def _check(cfg, text: str, out: Optional[Path], lay) -> None:
    from daemon.gateway.sync import Gateway

    with tempfile.TemporaryDirectory() as tmp:
        main = out if out is not None else Path(tmp) / "haproxy.cfg"
        if out is None:
            main.write_text(text)
        backends = lay.backends_cfg
        if not backends.exists():  # rendering only: check against an empty set of servers
            from daemon.gateway.render import render_backends_cfg

            backends = Path(tmp) / "backends.cfg"
            backends.write_text(render_backends_cfg(cfg))
        try:
            p = subprocess.run([cfg.gateway.haproxy, "-c", "-f", str(main), "-f", str(backends)],
                               capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            typer.echo(f"error: {cfg.gateway.haproxy}: not found (install it: scripts/deps-haproxy.sh)", err=True)
            raise typer.Exit(1) from None
    report = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        hint = "" if lay.lua.exists() else (f"\n(gateway.state_dir {lay.state_dir} is not prepared: "
                                            "--out FILE writes the config and prepares it)")
        typer.echo(f"error: haproxy -c rejected the configuration:\n{report}{hint}", err=True)
        raise typer.Exit(1)
    typer.echo(f"haproxy -c: {report.splitlines()[-1] if report else 'ok'}", err=True)


def gateway_status(cfg, client=None) -> dict:
    """The running gateway as a JSON-able dict (also what `status --json` prints)."""
    from daemon.gateway.bytes_per_token import INT_MAX
    from daemon.gateway.layout import Layout, split_backend
    from daemon.gateway.maps import byte_edges_of, shares_of_rows
    from daemon.gateway.runtime import RuntimeClient
    from daemon.gateway.sync import Gateway

    client = client or RuntimeClient(cfg.gateway.socket)
    lay = Layout.at(cfg.gateway.state_dir)
    obs = client.observe(Gateway(cfg, client).map_paths())
    grid = cfg.buckets.grid()
    services = {}
    for s in cfg.services:
        b_rows = obs.maps.get(str(lay.bucket_map(s.name)))
        w_rows = obs.maps.get(str(lay.weight_map(s.name)))
        starts = byte_edges_of(b_rows) if b_rows else None
        buckets = []
        for i in range(grid.n_input):
            hi_tok = grid.input_edges[i + 1] if i + 1 < grid.n_input else None
            entry = {"bucket": i, "tokens": [grid.input_edges[i], hi_tok]}
            if starts and i < len(starts):
                hi = starts[i + 1] - 1 if i + 1 < len(starts) else None
                entry["bytes"] = [starts[i], hi if hi != INT_MAX else None]
            buckets.append(entry)
        routes = {}
        for i, row in sorted(shares_of_rows(w_rows or ()).items()):
            routes[str(i)] = {(split_backend(b) or (None, b))[1]: round(w, 4) for b, w in sorted(row.items())}
        pools: dict[str, list] = {}
        for (be, name), srv in sorted(obs.servers.items()):
            split = split_backend(be)
            if not split or split[0] != s.name:
                continue
            pools.setdefault(split[1], []).append({
                "server": name, "address": srv.address, "admin": srv.admin, "up": srv.up,
                "connections": srv.connections})
        services[s.name] = {
            "maps_loaded": b_rows is not None and w_rows is not None,
            "buckets": buckets, "routes": routes, "pools": pools,
        }
    return {"socket": cfg.gateway.socket, "listen": cfg.gateway.listen, "services": services}


@app.command("status")
def status_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="fleet TOML (default: built-in defaults)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Routes, and servers per pool with their state, from the running HAProxy."""
    from daemon.gateway.runtime import RuntimeApiError

    cfg = _load(config)
    try:
        st = gateway_status(cfg)
    except RuntimeApiError as e:
        typer.echo(f"error: {e} (is HAProxy running with `fleetctl gateway config` output?)", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    typer.echo(f"gateway {st['listen']} (Runtime API {st['socket']})")
    for name, svc in st["services"].items():
        typer.echo(f"\nservice {name}" + ("" if svc["maps_loaded"] else "  (its maps are not loaded: re-render, restart)"))
        for b in svc["buckets"]:
            lo, hi = b["tokens"]
            tok = f"{lo}-{hi}" if hi is not None else f"{lo}+"
            by = b.get("bytes")
            size = (f"{by[0]}-{by[1]} B" if by[1] is not None else f"{by[0]}+ B") if by else "no bucket map"
            share = svc["routes"].get(str(b["bucket"]), {})
            route = ", ".join(f"{p} {w:.0%}" for p, w in share.items()) or "no route (503)"
            typer.echo(f"  bucket {b['bucket']}  {tok:>12} tokens  {size:>22}  -> {route}")
        for pool, servers in sorted(svc["pools"].items()):
            typer.echo(f"  pool {pool}")
            for s in servers:
                health = "up" if s["up"] else "DOWN"
                typer.echo(f"    {s['server']:<28} {s['address']:<22} {s['admin']:<6} {health:<5} "
                           f"{s['connections']} connection(s)")
        if not svc["pools"]:
            typer.echo("  no servers")
