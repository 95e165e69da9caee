"""The judge: a request-level serving model that says what a policy's fleet actually delivered.

Given the requests, the replicas a policy ran (when each became healthy, was
drained, was preempted or ended), the routing tables it published and each
service's model, SLO and engine settings, it replays every request through a
gateway and a vLLM-like engine per replica and reports, per request, TTFT, TPOT,
end-to-end latency and whether it was served; summed up, SLO attainment and
percentiles per service and per pool, failures by reason.

What it shares with the planner, and what it does not
------------------------------------------------------
Shared (on purpose, and only this): the per-iteration time of one engine step,
`daemon.capacity.estimator.Replica.iteration_time` (GEMM rooflines calibrated on
Vidur's measured operators, KV reads, prefill attention, tensor-parallel
all-reduces, host overhead), built with `make_replica` / `EngineParams` and the
GPU specs of `daemon.capacity.hardware`; and the facts those read (model shapes,
bytes per parameter). See `daemon.judge.steptime`.

Independent (the judge's own code, never reading the planner's MaxTput /
CapacityTable, its steady-state formulas or its SLO search):
- queueing and continuous batching, chunked prefill under a token budget,
  max_num_seqs, the KV-cache pool and preemption by recompute (`engine`);
- routing by input length along the published tables, least outstanding
  requests within a pool, health and fallback (`router`);
- replica lifecycles, the markets' preemption notice, retries (`judge`);
- attainment and percentiles (`verdict`).
So a capacity table that is wrong about queueing, bursts, KV limits or lost
requests is caught; an error in the step-time model itself is not (it is
checked against measurements instead: bench/judge_validation.py).

Public API
----------
    from daemon.judge import (judge, JudgeInputs, JudgeOptions, Requests, ReplicaSpan,
                              RoutingTable, ServiceSpec, Verdict)
    from daemon.judge.store_adapter import inputs_from_store, fleet_from_store, routing_from_store
"""

from daemon.judge.inputs import (
    MARKET_NOTICE_S,
    JudgeInputError,
    JudgeInputs,
    JudgeOptions,
    ReplicaSpan,
    Requests,
    RoutingTable,
    ServiceSpec,
    notice_for,
)
from daemon.judge.judge import judge
from daemon.judge.verdict import STATUS_NAMES, Verdict

__all__ = [
    "judge", "JudgeInputs", "JudgeOptions", "JudgeInputError", "Requests", "ReplicaSpan", "RoutingTable",
    "ServiceSpec", "Verdict", "STATUS_NAMES", "MARKET_NOTICE_S", "notice_for",
]
