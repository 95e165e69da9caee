"""A service's live demand feed from its config: `poll(now) -> new finished DemandWindows`.

The loop calls `poll` once per tick (I/O happens here, at the edge, never in
forecast or plan) and writes the windows to the store. Both feeds remember
only where they stopped; a restart resumes from the offset / last window end
the caller passes back in.
"""

from __future__ import annotations

import math
from typing import Protocol

from daemon.domain import BucketGrid, DemandWindow


class DemandFeed(Protocol):
    def poll(self, now: float) -> list[DemandWindow]: ...


class PrometheusFeed:
    """Finished windows since the last poll, from Prometheus; windows Prometheus has no sample for stay absent."""

    def __init__(self, source, service: str, grid: BucketGrid, window_s: float, last_end: float | None = None,
                 backfill_s: float = 3600.0):
        self.source, self.service, self.grid, self.window_s = source, service, grid, window_s
        self.last_end = last_end
        self.backfill_s = backfill_s

    def poll(self, now: float) -> list[DemandWindow]:
        end = math.floor(now / self.window_s) * self.window_s
        start = self.last_end if self.last_end is not None else end - self.backfill_s
        if end <= start:
            return []
        wins = self.source.windows(self.service, start, end, self.window_s, self.grid)
        self.last_end = end
        return wins


def open_feed(cfg, service: str, grid: BucketGrid, window_s: float) -> DemandFeed:
    """`cfg` is a daemon.config.DemandFeedConfig."""
    if cfg.kind == "request-log":
        from forecast.sources.request_log import RequestLogTail

        rl = cfg.request_log
        return RequestLogTail(rl.path, service, grid, window_s, fmt=rl.format, columns=rl.columns or None,
                              on_bad="skip" if rl.on_bad_row == "skip" else "raise")
    if cfg.kind == "prometheus":
        from forecast.sources.prometheus import PrometheusQueries, PrometheusSource

        p = cfg.prometheus
        q = PrometheusQueries()
        overrides = {k: v for k, v in (("requests", p.requests_query), ("input_buckets", p.input_buckets_query),
                                       ("output_buckets", p.output_buckets_query)) if v}
        if overrides:
            from dataclasses import replace

            q = replace(q, **overrides)
        return PrometheusFeed(PrometheusSource(p.url, p.selector, q, p.timeout_s), service, grid, window_s)
    raise ValueError(f"unknown demand feed kind {cfg.kind!r}")
