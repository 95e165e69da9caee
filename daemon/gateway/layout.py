"""Names and paths the gateway's pieces must agree on: backends, servers, map files.

One place decides them so that the rendered haproxy.cfg, the sync's Runtime API commands,
the files a restarted HAProxy reads, and the log parser never disagree.

- backend of (service, pool): `<service>__<pool>` (service names have no `_`, so the log
  parser splits it back at the first `__`);
- server of a replica: its instance name, restricted to HAProxy's name characters;
- per service, under the state dir: `buckets-<service>.map` (request bytes -> input bucket)
  and `weights-<service>.map` (bucket x 100 + rand(100) -> backend);
- `backends.cfg`: every backend with its current servers, loaded after haproxy.cfg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

NO_ROUTE_BACKEND = "no_route"  # answers 503: a bucket with no pool that has a serving replica
_NAME_OK = re.compile(r"[^A-Za-z0-9_.:-]")
WEIGHT_ROWS = 100  # rand(100): routing shares in steps of 1%


def backend_name(service: str, pool: str) -> str:
    return f"{service}__{_NAME_OK.sub('_', pool)}"


def split_backend(backend: str) -> tuple[str, str] | None:
    """(service, pool) of a backend this package named; None for others (no_route, stats)."""
    service, sep, pool = backend.partition("__")
    if not sep or not service or not pool:
        return None
    return service, pool


def server_name(replica_name: str) -> str:
    return _NAME_OK.sub("_", replica_name)


@dataclass(frozen=True)
class Layout:
    state_dir: Path

    @classmethod
    def at(cls, state_dir: str | Path) -> "Layout":
        return cls(Path(state_dir).absolute())

    def bucket_map(self, service: str) -> Path:
        return self.state_dir / f"buckets-{service}.map"

    def weight_map(self, service: str) -> Path:
        return self.state_dir / f"weights-{service}.map"

    @property
    def backends_cfg(self) -> Path:
        return self.state_dir / "backends.cfg"

    @property
    def lua(self) -> Path:
        return self.state_dir / "usage.lua"
