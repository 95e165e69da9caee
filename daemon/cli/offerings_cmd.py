"""`fleetctl offerings`: what can be rented now, with prices, from a provider.

    fleetctl offerings [--provider skypilot|simulated] [--gpu NAME] [--cloud NAME] [--json]

`--json` prints a list of objects with cloud, region, zone, instance_type, gpu,
gpu_count, market ("on-demand"/"spot"), price_per_hour, key and read_at.
Heavy imports (SkyPilot, pandas) happen only inside the command.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from enum import Enum
from typing import Optional

import typer

app = typer.Typer(help="List rentable offerings (instance shapes x places x markets) with prices.")


class ProviderKind(str, Enum):
    skypilot = "skypilot"
    simulated = "simulated"


def _clock() -> datetime:
    return datetime.now(timezone.utc)


def _log_to_stderr() -> None:
    """Keep stdout for the listing (`--json` must parse); logs go to stderr."""
    import sys

    import structlog

    class _Stderr:  # resolves sys.stderr at each write (test runners swap it)
        def write(self, s: str) -> int:
            return sys.stderr.write(s)

        def flush(self) -> None:
            sys.stderr.flush()

    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(_Stderr()))


def _load(config: Optional[str]):
    from daemon.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


def _read(kind: ProviderKind, cfg, gpu: Optional[str], cloud: Optional[str]):
    """(offerings, read_at, notes) from the chosen provider."""
    from daemon.wiring import build_provider

    notes: list[str] = []
    if kind is ProviderKind.simulated:
        cfg = cfg.model_copy(update={"provider": cfg.provider.model_copy(update={"kind": "simulated"})})
    else:
        sp = cfg.provider.skypilot
        update = {}
        if cloud:
            update["clouds"] = [cloud.lower()]  # read only that cloud's catalog: much faster
        if gpu:
            update["gpus"] = [gpu]
        cfg = cfg.model_copy(update={"provider": cfg.provider.model_copy(
            update={"kind": "skypilot", "skypilot": sp.model_copy(update=update)})})
    try:
        snap = build_provider(cfg, _clock).offerings_snapshot()
    except Exception as e:  # noqa: BLE001 - e.g. a bad offerings file: say so, no traceback
        typer.echo(f"error: {kind.value} provider: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(1) from None
    notes += [f"could not read {e}" for e in snap.errors]
    return list(snap.offerings), snap.read_at, notes


@app.callback(invoke_without_command=True)
def offerings(
    provider: Optional[ProviderKind] = typer.Option(
        None, "--provider", help="Where offerings come from (default: provider.kind of the config)."
    ),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Only this GPU type (e.g. A10G)."),
    cloud: Optional[str] = typer.Option(None, "--cloud", help="Only this cloud (aws, gcp, azure, lambda, slurm...)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", envvar="FLEET_CONFIG", help="Config TOML (default: built-in defaults)."
    ),
    limit: int = typer.Option(0, "--limit", help="Show at most this many rows, cheapest first (0 = all)."),
) -> None:
    _log_to_stderr()
    cfg = _load(config)
    provider = provider or ProviderKind(cfg.provider.kind)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ.setdefault("NO_GCE_CHECK", "True")
    offers, read_at, notes = _read(provider, cfg, gpu, cloud)
    if gpu:
        offers = [o for o in offers if o.gpu.lower() == gpu.lower()]
    if cloud:
        offers = [o for o in offers if o.cloud.lower() == cloud.lower()]
    offers.sort(key=lambda o: (o.price_per_hour, o.key))
    if limit > 0:
        offers = offers[:limit]
    for n in notes:
        typer.echo(f"warning: {n}", err=True)
    if as_json:
        rows = [
            {
                "cloud": o.cloud,
                "region": o.region,
                "zone": o.zone,
                "instance_type": o.instance_type,
                "gpu": o.gpu,
                "gpu_count": o.gpu_count,
                "market": str(o.market),
                "price_per_hour": o.price_per_hour,
                "key": o.key,
                "read_at": read_at.isoformat(),
            }
            for o in offers
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not offers:
        typer.echo("no offerings match")
        return
    header = ("CLOUD", "REGION", "ZONE", "INSTANCE TYPE", "GPU", "MARKET", "$/H")
    table = [header] + [
        (o.cloud, o.region, o.zone or "-", o.instance_type, f"{o.gpu}x{o.gpu_count}", str(o.market), f"{o.price_per_hour:.4f}")
        for o in offers
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    typer.echo(f"{len(offers)} offerings, prices read at {read_at.isoformat()} ({provider.value})")
