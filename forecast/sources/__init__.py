"""Readers of rate series for the forecast's backtests (not demand sources: those are daemon/demand/).

- `rate_csv.read_rate_csv`: `timestamp,rate` per fixed window (blank rate = missing window).
- `rate_csv.read_servegen_pool`: the ServeGen pool table, one model selected.

Request logs and Prometheus are read by daemon/demand (one parser per format,
shared by the daemon's live sources and the replay). None of these reads a
clock; missing windows stay missing (NaN), never 0.
"""

from daemon.demand.errors import DemandInputError as SourceError  # one error type for demand input

__all__ = ["SourceError"]
