"""What a tick publishes for the gateway: the healthy endpoints per service and pool, as JSON.

Written after each applied tick (loop.endpoints_path), from the store's RUNNING
instances (draining ones are out of routing) that the provider's last list
reported healthy. The routing table goes beside it (daemon/plan/routing.py).
"""

from __future__ import annotations

import json
from datetime import datetime

from daemon.files import write_atomic


def endpoints_document(serving: list[tuple], healthy: set[str], provider: str, now: datetime) -> dict:
    """`serving`: (name, service, pool, offering key, endpoint) of RUNNING instances."""
    services: dict[str, dict[str, list[dict]]] = {}
    for name, service, pool, offering, endpoint in sorted(serving):
        if endpoint and name in healthy:
            services.setdefault(service, {}).setdefault(pool, []).append(
                {"name": name, "endpoint": endpoint, "offering": offering})
    return {"updated_at": now.isoformat(), "provider": provider, "services": services}


def write_endpoints(path: str, serving: list[tuple], healthy: set[str], provider: str, now: datetime) -> None:
    write_atomic(path, json.dumps(endpoints_document(serving, healthy, provider, now), indent=2, sort_keys=True))
