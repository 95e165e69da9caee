"""Pure readers that turn demand records into rate series or demand windows.

- `rate_csv.read_rate_csv`: `timestamp,rate` per fixed window (blank rate = missing window).
- `rate_csv.read_servegen_pool`: the ServeGen pool table, one model selected.
- `request_log.read_request_log`: Azure 2023 CSV / JSONL / mapped-CSV request logs, tailed by byte offset.
- `prometheus.PrometheusSource`: vLLM metrics through the Prometheus HTTP query API.

None of them reads a clock; missing windows stay missing (NaN / absent), never 0.
"""


class SourceError(ValueError):
    """Input that cannot be used; the message names the file (or URL), line and field."""
