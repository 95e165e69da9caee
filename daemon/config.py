"""Configuration: TOML validated at load into typed, frozen models.

Every error names the file and the key path (e.g. `services[0].slo.tpot_p99_ms`)
and, where the set is closed, the allowed values. Unknown keys are errors: a
typo in a budget cap must not silently mean "no cap".
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.domain import BucketGrid


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file and key."""


class _Model(BaseModel):
    # strict: TOML has real types, so `min_replicas = true` or `port = "80"` is a typo, not a 1 or an 80
    # (ints are still accepted where a float is asked for).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Bounds:
    """The range a number must lie in; the error says it (and the property tests read it)."""

    lo: float
    hi: float
    lo_open: bool = False  # lo itself is not allowed
    unit: str = ""
    hi_open: bool = False  # hi itself is not allowed

    def text(self) -> str:
        lo = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        hi = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"{lo} and {hi}" + (f" ({self.unit})" if self.unit else "")

    def check(self, v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number {self.text()}, got {v}")
        if v < self.lo or v > self.hi or (self.lo_open and v == self.lo) or (self.hi_open and v == self.hi):
            raise ValueError(f"must be {self.text()}, got {_num(v)}")
        return v


def _num(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:,}" if isinstance(v, int) and abs(v) >= 100_000 else str(v)


def Num(lo: float, hi: float, *, gt: bool = False, lt: bool = False, unit: str = ""):
    """A finite float within [lo, hi] (open at lo with gt=True, at hi with lt=True)."""
    b = Bounds(lo, hi, gt, unit, lt)
    return Annotated[float, b, AfterValidator(b.check)]


def Int(lo: int, hi: int, *, unit: str = ""):
    """An integer (never a bool, never a string) within [lo, hi]."""
    b = Bounds(lo, hi, False, unit)
    return Annotated[int, b, AfterValidator(b.check)]


DAY = 86400.0
# Bounds say what makes sense for a control loop that ticks every few seconds to minutes;
# a value past them is a typo or a unit error (ms for s), and `inf` or 1e300 overflow
# datetime arithmetic, so every tick would fail. Upper bounds on memory: see each key.
Seconds = Num(0, 30 * DAY, unit="seconds")
PositiveSeconds = Num(0, 30 * DAY, gt=True, unit="seconds")
Share = Num(0, 1)
Usd = Num(0, 1e6, unit="$")
Seed = Int(0, 2**63 - 1)
PerHour = Num(0, 3600, unit="per hour")


# The demo workload is generated in memory (about 48 bytes a request): 20 M requests ~ 1 GiB.
MAX_DEMO_REQUESTS = 20_000_000


class StoreConfig(_Model):
    url: Annotated[str, Field(min_length=1, max_length=4096)] = "sqlite:///fleet.db"
    auto_upgrade: bool = True  # fleetd migrates at start under a lock; false = refuse if behind


class LoopConfig(_Model):
    tick_interval_s: Num(0.1, DAY, unit="seconds") = 60.0
    window_s: Num(0.1, DAY, unit="seconds") = 60.0  # length of one observed demand window
    lead_time_s: Num(0, DAY, unit="seconds") = 300.0  # provisioning lead: a launch now serves this much later
    # Demand history the forecast reads: the fitted models use about 4 days (daily season + lags).
    # At most 90 days: the tick holds it in memory (90 days of 1-minute windows per service).
    history_s: Num(0, 90 * DAY, gt=True, unit="seconds") = 4 * 86400.0
    # A tick that starts later than this is skipped (APScheduler's misfire_grace_time).
    misfire_grace_s: Num(1, DAY, unit="seconds") = 30.0
    # Re-plan only when a forecast rate moved by more than this share, a size mix by more
    # than this total variation, the fleet or the market cooldowns changed, or the plan is
    # older than replan_every_s; otherwise the last plan stands (hysteresis, and no solve).
    replan_rate_change: Num(0, 100) = 0.05
    replan_mix_change: Share = 0.05
    # Demand, fleet and market changes each trigger a solve; this catches slow price drift only
    # (catalogs refresh hourly), so an hour: at 900 s, on a 1-day replay of the built-in
    # workload, all 120 re-solves left the targets as they were.
    replan_every_s: PositiveSeconds = 3600.0
    # JSON of the healthy endpoints per service and pool, rewritten after each tick (unset: not written).
    endpoints_path: Annotated[str, Field(min_length=1)] | None = None

    @property
    def horizon_s(self) -> float:
        """The fleet planned now must fit demand at tick + lead time (issue: forecast horizon)."""
        return self.tick_interval_s + self.lead_time_s


class BucketConfig(_Model):
    input_edges: Annotated[list[Int(0, 100_000_000, unit="tokens")], Field(min_length=2, max_length=64)] = \
        [0, 256, 1024, 4096, 16384]
    output_edges: Annotated[list[Int(0, 100_000_000, unit="tokens")], Field(min_length=2, max_length=64)] = \
        [0, 64, 256, 1024, 4096]

    @model_validator(mode="after")
    def _valid(self) -> "BucketConfig":
        BucketGrid(tuple(self.input_edges), tuple(self.output_edges))
        return self

    def grid(self) -> BucketGrid:
        return BucketGrid(tuple(self.input_edges), tuple(self.output_edges))


class SimulatedProviderConfig(_Model):
    seed: Seed = 7
    offerings_file: Annotated[str, Field(min_length=1)] | None = None  # CSV like providers/data/offerings.csv; default: bundled
    clouds: list[str] = []  # empty = all in the offerings table
    launch_latency_s: tuple[Num(0, DAY, unit="seconds"), Num(0, DAY, unit="seconds")] = (120.0, 300.0)  # uniform
    stockout_probability: Share = 0.02
    launch_failure_probability: Share = 0.01
    spot_preemptions_per_hour: PerHour = 0.02  # per-zone hazard of a zone-wide spot loss
    spot_trace_dir: Annotated[str, Field(min_length=1)] | None = None  # availability traces (providers/spot_traces.py)
    spot_trace_offset_s: Num(0, 3650 * DAY, unit="seconds") = 0.0
    # JSON file the simulated cloud keeps its machines in, so they outlive a fleetd restart
    # as a real cloud's do (unset: in memory only, as a replay wants).
    state_file: Annotated[str, Field(min_length=1)] | None = None
    # Run each instance's replica as a real local process (providers/local_replica.py, an
    # OpenAI-compatible server with a latency model) on a free loopback port: RUNNING means it
    # answers /health, its endpoint points there, terminate stops it, a spot loss SIGKILLs it.
    replica_processes: bool = False
    replica_args: list[str] = []  # extra arguments, e.g. ["--max-model-len", "8192", "--tpot-s", "0.02"]
    replica_dir: Annotated[str, Field(min_length=1)] | None = None  # port/pid files and logs (unset: next to state_file, else a temp dir)

    @field_validator("launch_latency_s", mode="before")
    @classmethod
    def _pair(cls, v):
        return tuple(v) if isinstance(v, list) else v  # a TOML array; strict mode wants a tuple

    @field_validator("launch_latency_s")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError("min must not exceed max")
        return v


class SkyPilotProviderConfig(_Model):
    clouds: list[str] = ["aws", "gcp", "azure", "lambda"]
    regions: list[str] = []
    # SkyPilot cluster names: lower-case letters, digits and '-', starting with a letter.
    cluster_prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,29}$")] = "fleet"
    catalog_refresh_s: Num(1, 30 * DAY, unit="seconds") = 3600.0
    market_cooldown_s: Num(0, 7 * DAY, unit="seconds") = 600.0
    health_path: Annotated[str, Field(pattern=r"^/")] = "/health"
    serve_port: Int(1, 65535) = 8000
    setup: str = ""
    run: str = "python -m vllm.entrypoints.openai.api_server --model {model} --port {port}"
    envs: dict[str, str] = {}
    orphans: Literal["adopt", "terminate"] = "terminate"
    gpus: list[str] = []  # GPU types to offer; empty = every GPU some service allows
    cpus: str | None = None  # vCPUs asked for where there is no instance type to pin (Slurm), e.g. "1" or "4+"
    preemptible_partitions: list[str] = ["spot"]  # Slurm partitions (SkyPilot zones) offered as market "spot"
    status_refresh: Literal["force", "auto", "none"] = "force"  # sky.status refresh mode of each sync
    health_timeout_s: Num(0.1, 300, unit="seconds") = 2.0


class ProviderConfig(_Model):
    kind: Literal["simulated", "skypilot"] = "simulated"
    simulated: SimulatedProviderConfig = SimulatedProviderConfig()
    skypilot: SkyPilotProviderConfig = SkyPilotProviderConfig()


class SloConfig(_Model):
    ttft_p99_s: Num(0, 3600, gt=True, unit="seconds") = 2.0
    tpot_p99_ms: Num(0, 60000, gt=True, unit="ms") = 120.0


class PrometheusDemandConfig(_Model):
    """Prometheus HTTP API with vLLM's metrics (daemon/demand/prometheus.py); queries are PromQL
    templates where {sel} is the selector and {w} the window (defaults: vLLM's metric names)."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+")]
    selector: str = ""  # e.g. model_name="llama"
    requests_query: str | None = None
    input_buckets_query: str | None = None
    output_buckets_query: str | None = None
    timeout_s: Num(0.1, 300, unit="seconds") = 10.0
    # A window is read this long after it ended, so the scrapes inside it are in (1-2 scrape intervals).
    lateness_s: Num(0, DAY, unit="seconds") = 30.0
    backfill_s: Num(0, 90 * DAY, unit="seconds") = 3600.0  # history read at the very first start


class DemandSourceConfig(_Model):
    """Where a service's demand comes from: one `kind`, one protocol (daemon/demand/source.py)."""

    # demo: the built-in seeded workload; trace: a request log replayed as if live;
    # request-log: a log the daemon tails as it grows; prometheus: vLLM's metrics.
    kind: Literal["demo", "trace", "request-log", "prometheus"] = "demo"
    path: Annotated[str, Field(min_length=1)] | None = None  # the request log (trace, request-log); .xz/.gz/.bz2 only for trace
    # haproxy: the gateway's own per-request log (daemon/gateway/logformat.py; every service's
    # requests in one file, each service reads its own): set lateness_s to your longest request.
    format: Literal["auto", "azure", "jsonl", "csv", "haproxy"] = "auto"
    columns: dict[str, str] = {}  # other column / key names: {"timestamp": ..., "input_tokens": ..., "output_tokens": ...}
    on_bad_row: Literal["skip", "reject"] = "skip"
    speedup: Num(0.001, 1e6) = 1.0  # trace: trace seconds per clock second
    # request-log: a window is counted this long after it ended (a log written when requests
    # finish stamps them with their arrival, up to a request's duration late).
    lateness_s: Num(0, DAY, unit="seconds") = 5.0
    # The demo workload is made in memory: days x mean rate is bounded by MAX_DEMO_REQUESTS too.
    demo_days: Num(0, 366, gt=True, unit="days") = 3.0
    demo_mean_rps: Num(0, 10000, gt=True, unit="req/s") = 4.0
    demo_seed: Seed = 11
    prometheus: PrometheusDemandConfig | None = None

    @model_validator(mode="after")
    def _complete(self) -> "DemandSourceConfig":
        if self.kind in ("trace", "request-log") and not self.path:
            raise ValueError(f"path is required when kind = '{self.kind}'")
        if self.kind == "prometheus" and self.prometheus is None:
            raise ValueError("kind = 'prometheus' needs its [services.demand.prometheus] section (url, ...)")
        unknown = set(self.columns) - {"timestamp", "input_tokens", "output_tokens"}
        if unknown:
            raise ValueError(f"columns: unknown field(s) {sorted(unknown)}; allowed: timestamp, input_tokens, "
                             "output_tokens")
        if self.kind == "demo":
            n = self.demo_days * 86400.0 * self.demo_mean_rps
            if n > MAX_DEMO_REQUESTS:
                raise ValueError(f"demo_days x demo_mean_rps x 86400 = {n:,.0f} requests; at most "
                                 f"{MAX_DEMO_REQUESTS:,} (about 1 GiB in memory)")
        return self


class ServiceConfig(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]
    # Llama 3.1 8B: a 128k-token context, grouped-query attention (a small KV cache per token).
    model: Annotated[str, Field(min_length=1)] = "meta-llama/Llama-3.1-8B-Instruct"
    # The longest request (prompt + output, tokens) the servers accept: vLLM's --max-model-len.
    # Unset: the model's own context. 16384 covers every request of the Azure 2023 traces (the
    # longest has 14,089 tokens) and all but 0.002% of the built-in workload, and keeps 24 GB
    # cards usable: vLLM starts only if one such sequence fits its KV cache (2 GiB here; an
    # A10G or L4 holds about 30k tokens of Llama 3.1 8B after the weights).
    max_model_len: Int(16, 10_000_000) | None = 16384
    # Allowed GPU types: at least one (an empty list would be a service that can never run).
    gpus: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = ["A10G", "L4", "A100-80GB", "H100"]
    min_replicas: Int(0, 10000) = 1
    slo: SloConfig = SloConfig()
    demand: DemandSourceConfig = DemandSourceConfig()
    forecast: "ForecastConfig" = Field(default_factory=lambda: ForecastConfig())


class CapacityEntry(_Model):
    """MaxTput table of one (model, GPU shape): rows = input buckets, columns = output buckets."""

    model: Annotated[str, Field(min_length=1)]
    gpu: Annotated[str, Field(min_length=1)]
    gpu_count: Int(1, 64) = 1
    tputs: list[list[Num(0, 1e6, unit="req/s")]]
    source: str = "config"


class PolicyConfig(_Model):
    # 0.4, not 0.2: judged request by request, the 1-day built-in workload at 40 req/s (seeds 11
    # and 5) met the SLO 0.990 of the time at 0.4 against 0.985 at 0.2, for less money, because
    # the planner's MaxTput is a mean-field steady state that bursts and KV-cache swings exceed
    # (see the compare table in docs/compare.md).
    headroom: Num(0, 5) = 0.4
    # Size for the bursts inside a window: plan at least the rate that keeps a window's worst
    # burst within the TTFT objective (domain.burst_need), at this quantile over the recent
    # windows (policy.scale_down_delay_s), as a multiple of each window's mean rate; 0: off.
    # Sources that count requests without seeing them (Prometheus) give no bursts.
    burst_quantile: Share = 0.25
    spot: bool = True
    budget_per_hour: Num(0.01, 1e7, unit="$/h") | None = None  # hard cap on the planned fleet's $/h
    max_launches_per_tick: Int(0, 1_000_000) = 10  # 1,000,000: no limit (the Mélange comparison)
    max_terminations_per_tick: Int(0, 1_000_000) = 4
    drain_s: Num(0, DAY, unit="seconds") = 120.0
    scale_down_delay_s: Num(0, 7 * DAY, unit="seconds") = 1200.0  # SkyServe: scale down only after 1200 s of lower demand
    dry_run: bool = False  # plan and record, never call the provider
    paused: bool = False  # plan and record, never act; existing instances stay
    # 0.5, not 0.8: covering 80% of demand against any one location's loss bought on-demand
    # H100s (75% of the demo's bill) where headroom on spot serves the same requests better.
    spot_loss_coverage: Share = 0.5
    # solver.coverage = "risk": the share of demand a plan may expect to leave unserved through
    # spot losses (hazard x time to replace x what a loss leaves unserved, summed over locations).
    spot_risk_budget: Share = 0.002
    min_on_demand_share: Share = 0.0
    market_cooldown_s: Num(0, 7 * DAY, unit="seconds") = 600.0  # a spot market that failed/preempted gets nothing for this long
    # A launch not healthy this long after the provider accepted it is failed, terminated and
    # replaced elsewhere. SkyServe waits 1200 s for a replica's first readiness probe
    # (sky/serve/constants.py DEFAULT_INITIAL_DELAY_SECONDS, SkyPilot 0.14.1) and Karpenter 15 min
    # for a node to register (its NodeClaim registration TTL). Our SkyPilot e2e on the local Slurm
    # cluster measured 39-73 s from launch to healthy (issue 6, three runs) with a tiny server; a
    # cloud GPU VM that also installs vLLM and loads weights takes minutes more, well inside 1200 s.
    launch_timeout_s: Num(10, 7 * DAY, unit="seconds") = 1200.0
    # A market whose launches keep failing backs off: the n-th failure in a row (no launch
    # became healthy since) keeps it out for market_cooldown_s x 2^(n-1), at most this long...
    max_market_cooldown_s: PositiveSeconds = 6 * 3600.0
    backoff_alert_after: Int(1, 1000) = 3  # ...and from this many failures in a row, alerts.
    # A termination not confirmed by the provider this long after it was asked for is
    # alerted (it is retried every tick); a drain held this long past its end is forced.
    terminate_timeout_s: Num(1, 7 * DAY, unit="seconds") = 900.0
    drain_timeout_s: Num(1, 7 * DAY, unit="seconds") = 900.0


class QuotaConfig(_Model):
    """A cap on instances or GPUs over the offerings it matches (cloud quotas, org policy).

    Unset filters match everything, so `{cloud = "aws", region = "us-east-1", market = "spot",
    max_gpus = 32}` is AWS's per-region spot GPU quota and a quota naming every field is a
    per-offering cap. At least one of max_instances / max_gpus must be given.
    """

    name: str | None = None  # how alerts name it; default built from the filters
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    gpu: str | None = None
    market: Literal["on-demand", "spot"] | None = None
    max_instances: Int(0, 10_000_000) | None = None
    max_gpus: Int(0, 10_000_000) | None = None

    @model_validator(mode="after")
    def _has_limit(self) -> "QuotaConfig":
        if self.max_instances is None and self.max_gpus is None:
            raise ValueError("a quota needs max_instances or max_gpus")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"{k}={getattr(self, k)}" for k in ("cloud", "region", "zone", "instance_type", "gpu", "market")
                 if getattr(self, k) is not None]
        return ",".join(parts) or "all"


class SolverConfig(_Model):
    """How the planner's integer program is built and solved (daemon/plan/ilp.py)."""

    # PuLP's bundled CBC, HiGHS through highspy, or the one-pool greedy heuristic (daemon/plan/greedy.py).
    backend: Literal["cbc", "highs", "greedy"] = "cbc"
    time_limit_s: Num(1, 3600, unit="seconds") = 10.0  # below 1 s CBC cannot even start on a fleet
    gap: Share = 0.001  # relative MIP gap at which to stop
    decompose: bool = True  # solve services apart first; joint only if a shared limit binds
    accept_gap: Num(0, 100) = 0.25  # a time-limited plan is used only within this gap
    threads: Int(1, 1024) = 1
    warm_start: bool = True  # start from the current fleet
    routing: Literal["input", "cell"] = "input"  # route by input bucket (routable) or (input, output) cell
    slice_factor: Int(1, 1000) | None = None  # None: continuous shares; S: shares in 1/S steps
    amortize_h: Num(0.01, 8760, unit="hours") = 1.0  # one-off change costs are spread over this many hours
    launch_penalty_usd: Usd = 0.5  # per launch, on top of lead time x price
    # Per termination, on top of drain time x price. 0: the recent-peak floor over
    # policy.scale_down_delay_s already keeps a fleet from flapping; a fee on top kept idle spot
    # under ~$0.5/h forever (issue 11's measurement).
    disruption_usd: Usd = 0.0
    default_preemptions_per_hour: PerHour = 0.02  # spot hazard of a location with no history
    unserved_penalty_per_rps: Num(0.01, 1e9, unit="$/h per req/s") | None = None  # None: derived
    routes_path: Annotated[str, Field(min_length=1)] | None = None  # where the gateway routing table JSON is written
    # Zone loss: "reroute" (after losing any spot location the fleet, rerouted, still serves
    # policy.spot_loss_coverage of demand), "pool" (each pool keeps that share), or "risk"
    # (the expected share of demand lost to spot losses stays within policy.spot_risk_budget,
    # with spot_loss_coverage as a floor for any one loss).
    coverage: Literal["reroute", "pool", "risk"] = "reroute"
    spot_locations_per_pool: Int(0, 100_000) = 8  # spot candidates: k cheapest zones per pool; 0 = all
    max_upfront_scenarios: Int(0, 100_000) = 64  # zone-loss scenarios per service built at once; more: lazily


class MetricsConfig(_Model):
    """fleetd's Prometheus exporter (daemon/metrics.py): GET http://ADDRESS:PORT/metrics."""

    enabled: bool = True
    # Loopback by default: the metrics name services, GPU pools and spend. Listen wider
    # (e.g. "0.0.0.0") only behind a firewall or for a Prometheus on another host.
    address: str = "127.0.0.1"
    port: Int(1, 65535) = 9465

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not v or any(c in v for c in "/: ") or len(v) > 253:
                raise ValueError(f"not an IP address or host name: {v!r}") from None
        return v


class LeaderConfig(_Model):
    """Leader election between fleetd processes on one store (daemon/store/lease.py).

    One daemon holds the lease and acts; the others stand by. The leader renews every
    `renew_every_s`; a standby tries as often, so it takes over at most
    `ttl_s + renew_every_s` after the leader died or lost the database.
    """

    lease_name: Annotated[str, Field(min_length=1, max_length=64)] = "fleetd"  # one lease per fleet
    ttl_s: Num(1, 3600, unit="seconds") = 30.0
    renew_every_s: Num(0.1, 3600, unit="seconds") = 10.0
    # A provider call is started only with at least this much of the lease left.
    fence_margin_s: Num(0, 3600, unit="seconds") = 5.0

    @model_validator(mode="after")
    def _consistent(self) -> "LeaderConfig":
        if self.renew_every_s > self.ttl_s / 2:
            raise ValueError("renew_every_s must be at most ttl_s / 2 (a missed renewal must not cost the lease)")
        if self.fence_margin_s >= self.ttl_s / 2:
            raise ValueError("fence_margin_s must be below ttl_s / 2")
        return self


class Config(_Model):
    store: StoreConfig = StoreConfig()
    loop: LoopConfig = LoopConfig()
    buckets: BucketConfig = BucketConfig()
    provider: ProviderConfig = ProviderConfig()
    services: list[ServiceConfig] = Field(default_factory=lambda: [ServiceConfig(name="chat")])
    policy: PolicyConfig = PolicyConfig()
    # Explicit MaxTput tables; GPU types they do not cover come from stored profiles or
    # the estimator (daemon/capacity), flagged as such.
    capacity: list[CapacityEntry] = Field(default_factory=list)
    profiles: "ProfilesConfig" = Field(default_factory=lambda: ProfilesConfig())
    quotas: list[QuotaConfig] = Field(default_factory=list)
    solver: SolverConfig = SolverConfig()
    metrics: MetricsConfig = MetricsConfig()
    leader: LeaderConfig = LeaderConfig()
    gateway: "GatewayConfig" = Field(default_factory=lambda: GatewayConfig())

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        if not self.services:
            raise ValueError("at least one [[services]] entry is required")
        grid = self.buckets.grid()
        for k, entry in enumerate(self.capacity):
            if len(entry.tputs) != grid.n_input or any(len(r) != grid.n_output for r in entry.tputs):
                raise ValueError(
                    f"capacity[{k}].tputs: must be {grid.n_input} rows x {grid.n_output} columns "
                    f"(the [buckets] grid), got {len(entry.tputs)} rows"
                )
        if self.gateway.default_service is not None and self.gateway.default_service not in names:
            raise ValueError(f"gateway.default_service: {self.gateway.default_service!r} is not a service ({names})")
        return self


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


_TOML_TYPE = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
              dict: "a table"}


def _shown(value) -> str:
    """A wrong value as the operator wrote it, with its TOML type: `true (a boolean)`."""
    kind = _TOML_TYPE.get(type(value), type(value).__name__)
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({kind})"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = _loc(tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after"))))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            # A check across keys names the key it faults ("gateway.default_service: ...").
            named = re.match(r"([A-Za-z_][\w.\[\]]*): (.*)", msg, flags=re.S)
            if loc == "<top level>" and named:
                loc, msg = named.group(1), named.group(2)
        elif e["type"].endswith("_type") or e["type"] in ("int_from_float", "string_pattern_mismatch"):
            msg = f"{msg}, got {_shown(e.get('input'))}"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path | None) -> Config:
    """Load a TOML file; None gives the built-in defaults (equal to config.example.toml)."""
    if path is None:
        return default_config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, str(p))


def default_config() -> Config:
    """The built-in defaults: the same values config.example.toml documents."""
    return Config()


class ProfilesConfig(_Model):
    """Where capacity profiles live and what to do for a GPU type no profile covers."""

    profiles_dir: Annotated[str, Field(min_length=1)] = "profiles"  # JSON profiles (fleetctl profile measure/import/estimate --save)
    estimate_missing: bool = True  # no profile: estimate it (flagged) instead of excluding the GPU type
    engine: Literal["vllm-v1", "vllm-v0"] = "vllm-v1"  # serving engine the estimator assumes
    dtype: Literal["bf16", "fp16", "fp8", "int8"] = "bf16"



class ForecastConfig(_Model):
    quantile: Num(0, 1, gt=True, lt=True) = 0.9  # the planner sizes for this quantile of the rate
    refit_every_s: Num(1, 30 * DAY, unit="seconds") = 3600.0  # refit of the chosen model (RateForecaster.refit)
    reselect_every_s: Num(1, 30 * DAY, unit="seconds") = 86400.0  # full selection (RateForecaster.fit, auto)
    fit_budget_s: Num(0.1, 3600, unit="seconds") = 5.0
    # "auto" (chosen by backtest), one candidate of forecast.models.CANDIDATES, or "recent_peak"
    # (no statsmodels: the peak of the last policy.scale_down_delay_s, SkyServe-style).
    model: Annotated[str, Field(min_length=1)] = "auto"
    min_history_days: Num(0, 90, unit="days") = 2.0  # less: the recent-peak rule


# --- the gateway: HAProxy in front of the fleet (issue 14; daemon/gateway) ---


class GatewayConfig(_Model):
    """HAProxy in front of the fleet, kept in step with the plan through its Runtime API.

    `fleetctl gateway config` renders haproxy.cfg from this section, the services and the
    bucket grid; the daemon's gateway sync (daemon/gateway/sync.py) then drives the running
    HAProxy and keeps `state_dir` (map files, backends.cfg) equal to what it applied.
    """

    enabled: bool = False
    haproxy: str = "haproxy"  # binary (fleetctl gateway config --check runs `haproxy -c`)
    socket: str = "/run/gpufleet/haproxy.sock"  # Runtime API (admin level), a unix socket
    state_dir: str = "/var/lib/gpufleet/gateway"  # map files and backends.cfg, rewritten by each sync
    listen: str = "127.0.0.1:8080"  # where clients connect (loopback unless you mean otherwise)
    # How a request names its service: a header, or the first path segment (/chat/v1/...,
    # stripped before the replica sees it). Not the JSON `model` field: clients put `messages`
    # first, so on long prompts `model` lies beyond what HAProxy buffers.
    service_by: Literal["header", "path"] = "header"
    service_header: str = "X-Fleet-Service"
    default_service: str | None = None  # requests naming no service go here (unset: 404); see render.py
    gpu_counts: list[Int(1, 64)] = [1, 2, 4, 8]  # one backend per (service, GPU x count)
    retries: Int(0, 10) = 3  # per request, each on another replica (redispatch)
    connect_timeout_s: Num(0.01, 3600, unit="seconds") = 2.0
    # Replica silent this long (no first token, or no next token) ends the request; before the
    # first byte it is retried elsewhere (retry-on response-timeout).
    server_timeout_s: Num(0.01, DAY, unit="seconds") = 300.0
    client_timeout_s: Num(0.01, DAY, unit="seconds") = 300.0
    queue_timeout_s: Num(0.01, DAY, unit="seconds") = 30.0
    health_path: str = "/health"
    health_interval_s: Num(0.1, 3600, unit="seconds") = 2.0
    health_fall: Int(1, 100) = 2
    health_rise: Int(1, 100) = 2
    # HAProxy's buffer (tune.bufsize): only a request that fits in one buffer can be retried after
    # it was sent (a replica that died before answering), so it should hold the longest prompt.
    buffer_bytes: Int(16384, 1 << 30, unit="bytes") = 131072
    maxconn: Int(1, 10_000_000) = 4096
    log: str = "stdout"  # HAProxy log target for the per-request JSON lines: stdout, stderr, /dev/log, udp@host:port
    stats_listen: str | None = None  # e.g. "127.0.0.1:8404": HAProxy's stats page and /metrics
    # Bytes per prompt token before any fit, and the fit: request bytes = overhead + bpt x tokens,
    # fitted per service from the gateway's own log; bucket edges use the `quantile` of bpt so that
    # a request lands in its own input bucket or a higher one, rarely a lower one.
    bytes_per_token: Num(0.1, 1000, unit="bytes per token") = 3.0
    bytes_per_token_quantile: Num(0, 0.5, gt=True, lt=True) = 0.02
    bytes_per_token_min_samples: Int(10, 10_000_000) = 200
    bucket_map_change: Num(0, 1, lt=True) = 0.05  # rewrite the bucket map when an edge moves more

    @field_validator("listen", "stats_listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be HOST:PORT, got {v!r}")
        return v

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise ValueError(f"must be an absolute path without spaces, got {v!r}")
        return v

    @field_validator("service_header")
    @classmethod
    def _header(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9-]+", v):
            raise ValueError(f"must be a header name (letters, digits, '-'), got {v!r}")
        return v


ServiceConfig.model_rebuild()
Config.model_rebuild()
