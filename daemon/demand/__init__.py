"""Demand: where the loop's request rate and size mix come from.

- `source.py`: the `DemandSource` protocol (poll -> store -> commit, cursors) and
  `TraceReplay` (a request log played as if live; the replay and the demo use it).
- `request_log.py`: one parser per log format (Azure 2023 CSV, JSONL, CSV),
  shared by replay (`read_trace`) and live tailing.
- `tail.py`: `RequestLogTail`, a growing request log followed across rotations.
- `prometheus.py`: `PrometheusFeed`, vLLM's metrics through Prometheus.
- `windows.py`: aggregation of requests into windows by size bucket.
- `demo.py`: the built-in seeded workload.
"""
