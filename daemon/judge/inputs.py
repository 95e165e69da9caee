"""The judge's inputs: typed values any policy's run can be turned into.

A policy (this project's loop, a baseline, an oracle) is judged on what it
*did*: which replicas existed when (the fleet timeline), how it told the
gateway to split traffic (the routing timeline), and the requests that came.
Nothing here knows about the planner, its capacity table or the store; the
store adapter (`daemon.judge.store_adapter`) is one way to build these values.

Times are epoch seconds (floats) throughout: the trace's arrival times, a
replica's ready/drain/end times and a routing table's start share one clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from daemon.capacity.estimator import EngineParams
from daemon.domain import BucketGrid


class JudgeInputError(ValueError):
    """Inputs the judge cannot use; the message names the record and the field."""


# Preemption notice by cloud, seconds between the cloud's warning and the loss.
# - AWS: "A Spot Instance interruption notice is a warning that is issued two minutes before
#   Amazon EC2 stops or terminates your Spot Instance" (docs.aws.amazon.com/AWSEC2/latest/UserGuide/
#   spot-instance-termination-notices.html).
# - GCP: Spot VMs get 30 s between ACPI G2 Soft Off and G3 Mechanical Off (cloud.google.com/compute/
#   docs/instances/spot#preemption-process; the Compute API's Scheduling.skipGuestOsShutdown field:
#   "120 seconds ... for Standard VMs and 30 seconds for Spot VMs").
# - Azure: "Azure provides a minimum of 30-seconds advance notice before the actual eviction"
#   (learn.microsoft.com/azure/architecture/guide/spot/spot-eviction, via Scheduled Events;
#   learn.microsoft.com/azure/virtual-machines/spot-vms).
# Lambda sells no spot capacity; an unknown cloud gets no notice (the conservative reading).
MARKET_NOTICE_S: dict[str, float] = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}


def notice_for(cloud: str, table: Mapping[str, float] | None = None) -> float:
    return float((table if table is not None else MARKET_NOTICE_S).get(cloud.strip().lower(), 0.0))


@dataclass(frozen=True)
class Requests:
    """Columnar request log: one row per request (numpy arrays of equal length).

    `service[k]` indexes `services`. Arrivals need not be sorted; results come
    back in the order given.
    """

    arrival_s: np.ndarray  # float64 epoch seconds
    input_tokens: np.ndarray  # int64 prompt tokens
    output_tokens: np.ndarray  # int64 generated tokens (as the trace recorded them)
    service: np.ndarray  # int32 index into `services`
    services: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("input_tokens", "output_tokens", "service"):
            if len(getattr(self, name)) != n:
                raise JudgeInputError(f"requests.{name} has {len(getattr(self, name))} rows, arrival_s has {n}")
        if n == 0:
            return
        if not np.all(np.isfinite(self.arrival_s)):
            raise JudgeInputError(f"requests.arrival_s: row {int(np.argmin(np.isfinite(self.arrival_s)))} is not finite")
        if int(np.min(self.input_tokens)) < 1:
            raise JudgeInputError(f"requests.input_tokens: row {int(np.argmin(self.input_tokens))} is below 1")
        if int(np.min(self.output_tokens)) < 1:
            raise JudgeInputError(f"requests.output_tokens: row {int(np.argmin(self.output_tokens))} is below 1")
        if int(np.min(self.service)) < 0 or int(np.max(self.service)) >= len(self.services):
            raise JudgeInputError(f"requests.service: codes must index services {self.services}")

    def __len__(self) -> int:
        return int(len(self.arrival_s))

    @classmethod
    def build(cls, arrival_s, input_tokens, output_tokens, service: str | Sequence[str] | np.ndarray,
              services: Sequence[str] | None = None) -> "Requests":
        """From plain arrays; `service` is one name for every row, or a name/code per row."""
        arr = np.asarray(arrival_s, dtype=np.float64)
        if isinstance(service, str):
            names = tuple(services) if services else (service,)
            if service not in names:
                raise JudgeInputError(f"requests: service {service!r} not in {names}")
            codes = np.full(arr.shape, names.index(service), dtype=np.int32)
        else:
            svc = np.asarray(service)
            if svc.dtype.kind in "iu":
                if services is None:
                    raise JudgeInputError("requests: integer service codes need the services tuple")
                names, codes = tuple(services), svc.astype(np.int32)
            else:
                names = tuple(services) if services else tuple(sorted(set(svc.tolist())))
                index = {n: k for k, n in enumerate(names)}
                try:
                    codes = np.array([index[s] for s in svc.tolist()], dtype=np.int32)
                except KeyError as e:
                    raise JudgeInputError(f"requests: service {e.args[0]!r} not in {names}") from None
        return cls(arr, np.asarray(input_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64),
                   codes, names)

    @classmethod
    def from_trace(cls, trace, service: str) -> "Requests":
        """A `daemon.demand.request_log.RequestTrace` (arrivals relative to its start) for one service."""
        t0 = trace.start.timestamp()
        return cls.build(t0 + np.asarray(trace.t, dtype=np.float64), trace.input_tokens, trace.output_tokens, service)

    @classmethod
    def concat(cls, parts: Sequence["Requests"]) -> "Requests":
        """Several services' logs in one (a multi-service replay has one trace per service)."""
        names: list[str] = []
        for p in parts:
            for s in p.services:
                if s not in names:
                    names.append(s)
        codes = [np.array([names.index(s) for s in p.services], dtype=np.int32)[p.service] for p in parts]
        return cls(np.concatenate([p.arrival_s for p in parts]), np.concatenate([p.input_tokens for p in parts]),
                   np.concatenate([p.output_tokens for p in parts]), np.concatenate(codes), tuple(names))


@dataclass(frozen=True)
class ReplicaSpan:
    """One replica's life as the gateway saw it.

    ready_at: healthy, enters routing (None: never became ready, never serves).
    drain_at: leaves routing for a scale-down, finishing what it holds (None: never).
    end_at: the server stops; whatever it still holds is lost (None: outlives the run).
    preempted: the end was the cloud's; with notice_s > 0 the replica leaves routing
      at end_at - notice_s (the gateway acts on the market's warning).
    out_of_routing: further (start, end) windows out of routing, e.g. a drain that was
      reversed (DRAINING -> RUNNING).
    """

    name: str
    service: str
    pool: str  # what the routing table names, e.g. "A10Gx1"
    gpu: str
    gpu_count: int
    market: str
    cloud: str
    ready_at: float | None
    end_at: float | None
    drain_at: float | None = None
    preempted: bool = False
    notice_s: float = 0.0
    out_of_routing: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.gpu_count < 1:
            raise JudgeInputError(f"replica {self.name}: gpu_count must be >= 1, got {self.gpu_count}")
        if self.notice_s < 0 or not math.isfinite(self.notice_s):
            raise JudgeInputError(f"replica {self.name}: notice_s must be finite and >= 0, got {self.notice_s}")
        for fld in ("ready_at", "end_at", "drain_at"):
            v = getattr(self, fld)
            if v is not None and not math.isfinite(v):
                raise JudgeInputError(f"replica {self.name}: {fld} is not finite ({v})")
        if self.ready_at is not None and self.end_at is not None and self.end_at < self.ready_at:
            raise JudgeInputError(f"replica {self.name}: end_at {self.end_at} is before ready_at {self.ready_at}")
        for a, b in self.out_of_routing:
            if b < a:
                raise JudgeInputError(f"replica {self.name}: out_of_routing window ({a}, {b}) ends before it starts")

    @property
    def routing_stops_at(self) -> float | None:
        """When the gateway stops sending new requests (drain, notice or end, whichever first)."""
        cands = [t for t in (self.drain_at, self.end_at) if t is not None]
        if self.preempted and self.end_at is not None and self.notice_s > 0:
            cands.append(self.end_at - self.notice_s)
        return min(cands) if cands else None


Weights = tuple[tuple[str, float], ...]  # ((pool, weight), ...)


@dataclass(frozen=True)
class RoutingTable:
    """From `start_s` on, a request of `service` in input bucket i goes to pool p with share w.

    Weights of a (service, bucket) need not sum to 1; the router normalises over the
    pools that have a healthy replica at the time.
    """

    start_s: float
    weights: Mapping[tuple[str, int], Weights]

    @classmethod
    def from_routes(cls, start_s: float, routes: Sequence[Mapping]) -> "RoutingTable":
        """From plan-dict routes ({"service", "input_bucket", "pool", "weight", "output_bucket"}).

        Plans that route by (input, output) cell are summed over output buckets: a
        gateway sees only the prompt, never the length of the answer to come.
        """
        acc: dict[tuple[str, int], dict[str, float]] = {}
        for k, r in enumerate(routes):
            try:
                key = (str(r["service"]), int(r["input_bucket"]))
                w = float(r["weight"])
                pool = str(r["pool"])
            except (KeyError, TypeError, ValueError) as e:
                raise JudgeInputError(f"routing table at {start_s}: route {k} is malformed ({e})") from None
            if w < 0 or not math.isfinite(w):
                raise JudgeInputError(f"routing table at {start_s}: route {k} has weight {w}")
            if w > 0:
                acc.setdefault(key, {}).setdefault(pool, 0.0)
                acc[key][pool] += w
        return cls(float(start_s), {k: tuple(sorted(v.items())) for k, v in acc.items()})


@dataclass(frozen=True)
class ServiceSpec:
    """What the judge needs of one service: its model, context, SLO and engine settings."""

    name: str
    model: str
    ttft_slo_s: float
    tpot_slo_ms: float
    max_model_len: int | None = None  # None: the model's context from daemon.capacity.models
    engine: "str | EngineParams" = "vllm-v1"  # a name in estimator.ENGINES, or custom EngineParams (max_num_seqs ...)
    dtype: str = "bf16"

    @classmethod
    def from_config(cls, cfg, service) -> "ServiceSpec":
        """From a `Config` and one of its `ServiceConfig`s (model, SLO, [profiles] engine and dtype)."""
        return cls(name=service.name, model=service.model, ttft_slo_s=float(service.slo.ttft_p99_s),
                   tpot_slo_ms=float(service.slo.tpot_p99_ms), max_model_len=service.max_model_len,
                   engine=cfg.profiles.engine, dtype=cfg.profiles.dtype)

    def context_limit(self) -> int:
        """max_model_len, at most the model's own context (vLLM refuses a longer max_model_len)."""
        from daemon.capacity.models import model_arch

        try:
            ctx = int(model_arch(self.model).max_context)
        except KeyError as e:
            if self.max_model_len is not None:
                return int(self.max_model_len)
            raise JudgeInputError(f"service {self.name}: {e.args[0]}") from None
        return ctx if self.max_model_len is None else min(int(self.max_model_len), ctx)


@dataclass(frozen=True)
class JudgeInputs:
    requests: Requests
    fleet: tuple[ReplicaSpan, ...]
    routing: tuple[RoutingTable, ...]
    grid: BucketGrid
    services: Mapping[str, ServiceSpec]

    def __post_init__(self) -> None:
        for s in self.requests.services:
            if s not in self.services:
                raise JudgeInputError(f"requests name service {s!r}, which has no ServiceSpec")
        names = set()
        for r in self.fleet:
            if r.name in names:
                raise JudgeInputError(f"fleet: replica name {r.name!r} appears twice")
            names.add(r.name)
            if r.service not in self.services:
                raise JudgeInputError(f"replica {r.name}: service {r.service!r} has no ServiceSpec")
        starts = [t.start_s for t in self.routing]
        if any(b < a for a, b in zip(starts, starts[1:])):
            raise JudgeInputError("routing timeline must be sorted by start_s")


@dataclass(frozen=True)
class JudgeOptions:
    """How the judge behaves where a real system has a knob.

    max_retries: times the gateway re-sends a request whose replica was lost before
      it fails it (each retry recomputes the prompt and the tokens already streamed).
    block_size: vLLM's KV-cache block (16 tokens by default); the cache holds whole
      blocks, so each running sequence wastes half a block on average.
    seed: the router's weighted pool choice draws from this seed.
    closed_form: advance decode-only stretches in closed form (False: step every
      iteration; same results, slower; the tests compare the two).
    """

    seed: int = 0
    max_retries: int = 2
    block_size: int = 16
    closed_form: bool = True
