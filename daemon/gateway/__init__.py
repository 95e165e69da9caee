"""The gateway: HAProxy in front of the fleet, routing requests by the plan (issue 14).

What the loop uses (see README "Putting HAProxy in front of a fleet"):

- `Gateway(cfg).sync(DesiredState(routes, replicas, bytes_per_token)) -> SyncResult`:
  brings the running HAProxy in step through its Runtime API and writes the same state to
  `gateway.state_dir` (daemon/gateway/sync.py);
- `Replica(service, pool, name, endpoint, state)` / `Replica.from_instance(row)`: one replica
  with its lifecycle state (daemon/gateway/state.py);
- `fit_bytes_per_token(pairs)` / `BytesPerTokenTracker`: bytes per prompt token from the
  gateway's own log (daemon/gateway/bytes_per_token.py), fed by `bytes_token_pairs(records, service)`;
- `parse_line(text, line, source) -> GatewayRequest | None`: the log parser
  (daemon/gateway/logformat.py);
- `render_haproxy_cfg(cfg)`: the configuration an operator deploys (daemon/gateway/render.py).
"""

from daemon.gateway.bytes_per_token import BytesPerToken, BytesPerTokenTracker, fit_bytes_per_token
from daemon.gateway.logformat import GatewayLogError, GatewayRequest, bytes_token_pairs, parse_line, read_lines
from daemon.gateway.render import render_backends_cfg, render_haproxy_cfg
from daemon.gateway.runtime import RuntimeApiError, RuntimeClient
from daemon.gateway.state import Action, DesiredState, Replica
from daemon.gateway.sync import Gateway, SyncResult, plan_sync

__all__ = [
    "Action", "BytesPerToken", "BytesPerTokenTracker", "DesiredState", "Gateway", "GatewayLogError", "GatewayRequest", "Replica",
    "RuntimeApiError", "RuntimeClient", "SyncResult", "bytes_token_pairs", "fit_bytes_per_token", "parse_line",
    "plan_sync", "read_lines", "render_backends_cfg", "render_haproxy_cfg",
]
