"""Configuration: TOML validated at load into typed, frozen models.

Every error names the file and the key path (e.g. `services[0].slo.tpot_p99_ms`)
and, where the set is closed, the allowed values. Unknown keys are errors: a
typo in a budget cap must not silently mean "no cap".
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.domain import BucketGrid


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file and key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class StoreConfig(_Model):
    url: str = "sqlite:///fleet.db"
    auto_upgrade: bool = True  # fleetd migrates at start under a lock; false = refuse if behind


class LoopConfig(_Model):
    tick_interval_s: PositiveFloat = 60.0
    window_s: PositiveFloat = 60.0  # length of one observed demand window
    lead_time_s: NonNegFloat = 300.0  # provisioning lead: a launch now serves this much later
    # Demand history the forecast reads: the fitted models use about 4 days (daily season + lags).
    history_s: PositiveFloat = 4 * 86400.0
    misfire_grace_s: PositiveFloat = 30.0
    # Re-plan only when a forecast rate moved by more than this share, a size mix by more
    # than this total variation, the fleet or the market cooldowns changed, or the plan is
    # older than replan_every_s; otherwise the last plan stands (hysteresis, and no solve).
    replan_rate_change: Annotated[float, Field(ge=0)] = 0.05
    replan_mix_change: Annotated[float, Field(ge=0, le=1)] = 0.05
    # Demand, fleet and market changes each trigger a solve; this catches slow price drift only
    # (catalogs refresh hourly), so an hour: at 900 s, on a 1-day replay of the built-in
    # workload, all 120 re-solves left the targets as they were.
    replan_every_s: PositiveFloat = 3600.0
    # JSON of the healthy endpoints per service and pool, rewritten after each tick (unset: not written).
    endpoints_path: str | None = None

    @property
    def horizon_s(self) -> float:
        """The fleet planned now must fit demand at tick + lead time (issue: forecast horizon)."""
        return self.tick_interval_s + self.lead_time_s


class BucketConfig(_Model):
    input_edges: list[int] = [0, 256, 1024, 4096, 16384]
    output_edges: list[int] = [0, 64, 256, 1024, 4096]

    @model_validator(mode="after")
    def _valid(self) -> "BucketConfig":
        BucketGrid(tuple(self.input_edges), tuple(self.output_edges))
        return self

    def grid(self) -> BucketGrid:
        return BucketGrid(tuple(self.input_edges), tuple(self.output_edges))


class SimulatedProviderConfig(_Model):
    seed: int = 7
    offerings_file: str | None = None  # CSV like providers/data/offerings.csv; default: bundled
    clouds: list[str] = []  # empty = all in the offerings table
    launch_latency_s: tuple[NonNegFloat, NonNegFloat] = (120.0, 300.0)  # uniform [min, max]
    stockout_probability: Annotated[float, Field(ge=0, le=1)] = 0.02
    launch_failure_probability: Annotated[float, Field(ge=0, le=1)] = 0.01
    spot_preemptions_per_hour: NonNegFloat = 0.02  # per-zone hazard of a zone-wide spot loss
    spot_trace_dir: str | None = None  # replay availability traces (see providers/spot_traces.py)
    spot_trace_offset_s: NonNegFloat = 0.0
    # JSON file the simulated cloud keeps its machines in, so they outlive a fleetd restart
    # as a real cloud's do (unset: in memory only, as a replay wants).
    state_file: str | None = None
    # Run each instance's replica as a real local process (providers/local_replica.py, an
    # OpenAI-compatible server with a latency model) on a free loopback port: RUNNING means it
    # answers /health, its endpoint points there, terminate stops it, a spot loss SIGKILLs it.
    replica_processes: bool = False
    replica_args: list[str] = []  # extra arguments, e.g. ["--max-model-len", "8192", "--tpot-s", "0.02"]
    replica_dir: str | None = None  # port/pid files and logs (unset: next to state_file, else a temp dir)

    @field_validator("launch_latency_s")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError("min must not exceed max")
        return v


class SkyPilotProviderConfig(_Model):
    clouds: list[str] = ["aws", "gcp", "azure", "lambda"]
    regions: list[str] = []
    cluster_prefix: str = "fleet"
    catalog_refresh_s: PositiveFloat = 3600.0
    market_cooldown_s: NonNegFloat = 600.0
    health_path: str = "/health"
    serve_port: int = 8000
    setup: str = ""
    run: str = "python -m vllm.entrypoints.openai.api_server --model {model} --port {port}"
    envs: dict[str, str] = {}
    orphans: Literal["adopt", "terminate"] = "terminate"
    gpus: list[str] = []  # GPU types to offer; empty = every GPU some service allows
    cpus: str | None = None  # vCPUs asked for where there is no instance type to pin (Slurm), e.g. "1" or "4+"
    preemptible_partitions: list[str] = ["spot"]  # Slurm partitions (SkyPilot zones) offered as market "spot"
    status_refresh: Literal["force", "auto", "none"] = "force"  # sky.status refresh mode of each sync
    health_timeout_s: PositiveFloat = 2.0


class ProviderConfig(_Model):
    kind: Literal["simulated", "skypilot"] = "simulated"
    simulated: SimulatedProviderConfig = SimulatedProviderConfig()
    skypilot: SkyPilotProviderConfig = SkyPilotProviderConfig()


class SloConfig(_Model):
    ttft_p99_s: PositiveFloat = 2.0
    tpot_p99_ms: PositiveFloat = 120.0


class PrometheusDemandConfig(_Model):
    """Prometheus HTTP API with vLLM's metrics (daemon/demand/prometheus.py); queries are PromQL
    templates where {sel} is the selector and {w} the window (defaults: vLLM's metric names)."""

    url: str
    selector: str = ""  # e.g. model_name="llama"
    requests_query: str | None = None
    input_buckets_query: str | None = None
    output_buckets_query: str | None = None
    timeout_s: PositiveFloat = 10.0
    # A window is read this long after it ended, so the scrapes inside it are in (1-2 scrape intervals).
    lateness_s: NonNegFloat = 30.0
    backfill_s: NonNegFloat = 3600.0  # history read at the very first start


class DemandSourceConfig(_Model):
    """Where a service's demand comes from: one `kind`, one protocol (daemon/demand/source.py)."""

    # demo: the built-in seeded workload; trace: a request log replayed as if live;
    # request-log: a log the daemon tails as it grows; prometheus: vLLM's metrics.
    kind: Literal["demo", "trace", "request-log", "prometheus"] = "demo"
    path: str | None = None  # the request log (trace, request-log); .xz/.gz/.bz2 only for trace
    format: Literal["auto", "azure", "jsonl", "csv"] = "auto"
    columns: dict[str, str] = {}  # other column / key names: {"timestamp": ..., "input_tokens": ..., "output_tokens": ...}
    on_bad_row: Literal["skip", "reject"] = "skip"
    speedup: PositiveFloat = 1.0  # trace: trace seconds per clock second
    # request-log: a window is counted this long after it ended (a log written when requests
    # finish stamps them with their arrival, up to a request's duration late).
    lateness_s: NonNegFloat = 5.0
    demo_days: PositiveFloat = 3.0
    demo_mean_rps: PositiveFloat = 4.0
    demo_seed: int = 11
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
        return self


class ServiceConfig(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]
    # Llama 3.1 8B: a 128k-token context, grouped-query attention (a small KV cache per token).
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    # The longest request (prompt + output, tokens) the servers accept: vLLM's --max-model-len.
    # Unset: the model's own context. 16384 covers every request of the Azure 2023 traces (the
    # longest has 14,089 tokens) and all but 0.002% of the built-in workload, and keeps 24 GB
    # cards usable: vLLM starts only if one such sequence fits its KV cache (2 GiB here; an
    # A10G or L4 holds about 30k tokens of Llama 3.1 8B after the weights).
    max_model_len: Annotated[int, Field(ge=16)] | None = 16384
    gpus: list[str] = ["A10G", "L4", "A100-80GB", "H100"]  # allowed GPU types
    min_replicas: Annotated[int, Field(ge=0)] = 1
    slo: SloConfig = SloConfig()
    demand: DemandSourceConfig = DemandSourceConfig()
    forecast: "ForecastConfig" = Field(default_factory=lambda: ForecastConfig())


class CapacityEntry(_Model):
    """MaxTput table of one (model, GPU shape): rows = input buckets, columns = output buckets."""

    model: str
    gpu: str
    gpu_count: Annotated[int, Field(ge=1)] = 1
    tputs: list[list[NonNegFloat]]
    source: str = "config"


class PolicyConfig(_Model):
    headroom: Annotated[float, Field(ge=0, le=5)] = 0.2
    spot: bool = True
    budget_per_hour: PositiveFloat | None = None  # hard cap on the planned fleet's $/h
    max_launches_per_tick: Annotated[int, Field(ge=0)] = 10
    max_terminations_per_tick: Annotated[int, Field(ge=0)] = 4
    drain_s: NonNegFloat = 120.0
    scale_down_delay_s: NonNegFloat = 1200.0  # SkyServe: scale down only after 1200 s of lower demand
    dry_run: bool = False  # plan and record, never call the provider
    paused: bool = False  # plan and record, never act; existing instances stay
    spot_loss_coverage: Annotated[float, Field(ge=0, le=1)] = 0.8
    # solver.coverage = "risk": the share of demand a plan may expect to leave unserved through
    # spot losses (hazard x time to replace x what a loss leaves unserved, summed over locations).
    spot_risk_budget: Annotated[float, Field(ge=0, le=1)] = 0.002
    min_on_demand_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    market_cooldown_s: NonNegFloat = 600.0  # a spot market that failed/preempted gets nothing for this long
    # A launch not healthy this long after the provider accepted it is failed, terminated and
    # replaced elsewhere. SkyServe waits 1200 s for a replica's first readiness probe
    # (sky/serve/constants.py DEFAULT_INITIAL_DELAY_SECONDS, SkyPilot 0.14.1) and Karpenter 15 min
    # for a node to register (its NodeClaim registration TTL). Our SkyPilot e2e on the local Slurm
    # cluster measured 39-73 s from launch to healthy (issue 6, three runs) with a tiny server; a
    # cloud GPU VM that also installs vLLM and loads weights takes minutes more, well inside 1200 s.
    launch_timeout_s: PositiveFloat = 1200.0
    # A market whose launches keep failing backs off: the n-th failure in a row (no launch
    # became healthy since) keeps it out for market_cooldown_s x 2^(n-1), at most this long...
    max_market_cooldown_s: PositiveFloat = 6 * 3600.0
    backoff_alert_after: Annotated[int, Field(ge=1)] = 3  # ...and from this many failures in a row, alerts.
    # A termination not confirmed by the provider this long after it was asked for is
    # alerted (it is retried every tick); a drain held this long past its end is forced.
    terminate_timeout_s: PositiveFloat = 900.0
    drain_timeout_s: PositiveFloat = 900.0


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
    max_instances: Annotated[int, Field(ge=0)] | None = None
    max_gpus: Annotated[int, Field(ge=0)] | None = None

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
    time_limit_s: PositiveFloat = 10.0
    gap: Annotated[float, Field(ge=0, le=1)] = 0.001  # relative MIP gap at which to stop
    decompose: bool = True  # solve services apart first; joint only if a shared limit binds
    accept_gap: Annotated[float, Field(ge=0)] = 0.25  # a time-limited plan is used only within this gap
    threads: Annotated[int, Field(ge=1)] = 1
    warm_start: bool = True  # start from the current fleet
    routing: Literal["input", "cell"] = "input"  # route by input bucket (routable) or (input, output) cell
    slice_factor: Annotated[int, Field(ge=1)] | None = None  # None: continuous shares; S: shares in 1/S steps
    amortize_h: PositiveFloat = 1.0  # one-off change costs are spread over this many hours
    launch_penalty_usd: NonNegFloat = 0.5  # per launch, on top of lead time x price
    disruption_usd: NonNegFloat = 0.5  # per termination, on top of drain time x price
    default_preemptions_per_hour: NonNegFloat = 0.02  # spot hazard of a location with no history
    unserved_penalty_per_rps: PositiveFloat | None = None  # $/h per req/s left unserved; None: derived
    routes_path: str | None = None  # where the gateway routing table JSON is written
    # Zone loss: "reroute" (after losing any spot location the fleet, rerouted, still serves
    # policy.spot_loss_coverage of demand), "pool" (each pool keeps that share), or "risk"
    # (the expected share of demand lost to spot losses stays within policy.spot_risk_budget,
    # with spot_loss_coverage as a floor for any one loss).
    coverage: Literal["reroute", "pool", "risk"] = "reroute"
    spot_locations_per_pool: Annotated[int, Field(ge=0)] = 8  # spot candidates: k cheapest zones per pool; 0 = all
    max_upfront_scenarios: Annotated[int, Field(ge=0)] = 64  # zone-loss scenarios per service built at once; more: lazily


class MetricsConfig(_Model):
    """fleetd's Prometheus exporter (daemon/metrics.py): GET http://ADDRESS:PORT/metrics."""

    enabled: bool = True
    # Loopback by default: the metrics name services, GPU pools and spend. Listen wider
    # (e.g. "0.0.0.0") only behind a firewall or for a Prometheus on another host.
    address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9465

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
    ttl_s: PositiveFloat = 30.0
    renew_every_s: PositiveFloat = 10.0
    # A provider call is started only with at least this much of the lease left.
    fence_margin_s: NonNegFloat = 5.0

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
                    f"capacity[{k}].tputs must be {grid.n_input} rows x {grid.n_output} columns "
                    f"(the [buckets] grid), got {len(entry.tputs)} rows"
                )
        if self.gateway.default_service is not None and self.gateway.default_service not in names:
            raise ValueError(f"gateway.default_service {self.gateway.default_service!r} is not a service ({names})")
        return self


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = _loc(tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after"))))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
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

    profiles_dir: str = "profiles"  # JSON profiles (fleetctl profile measure/import/estimate --save)
    estimate_missing: bool = True  # no profile: estimate it (flagged) instead of excluding the GPU type
    engine: Literal["vllm-v1", "vllm-v0"] = "vllm-v1"  # serving engine the estimator assumes
    dtype: Literal["bf16", "fp16", "fp8", "int8"] = "bf16"



class ForecastConfig(_Model):
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.9  # the planner sizes for this quantile of the rate
    refit_every_s: PositiveFloat = 3600.0  # refit of the chosen model (RateForecaster.refit)
    reselect_every_s: PositiveFloat = 86400.0  # full rolling-origin selection (RateForecaster.fit, model auto)
    fit_budget_s: PositiveFloat = 5.0
    # "auto" (chosen by backtest), one candidate of forecast.models.CANDIDATES, or "recent_peak"
    # (no statsmodels: the peak of the last policy.scale_down_delay_s, SkyServe-style).
    model: str = "auto"
    min_history_days: NonNegFloat = 2.0  # less: the recent-peak rule


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
    gpu_counts: list[Annotated[int, Field(ge=1)]] = [1, 2, 4, 8]  # one backend per (service, GPU x count)
    retries: Annotated[int, Field(ge=0, le=10)] = 3  # per request, each on another replica (redispatch)
    connect_timeout_s: PositiveFloat = 2.0
    # Replica silent this long (no first token, or no next token) ends the request; before the
    # first byte it is retried elsewhere (retry-on response-timeout).
    server_timeout_s: PositiveFloat = 300.0
    client_timeout_s: PositiveFloat = 300.0
    queue_timeout_s: PositiveFloat = 30.0
    health_path: str = "/health"
    health_interval_s: PositiveFloat = 2.0
    health_fall: Annotated[int, Field(ge=1)] = 2
    health_rise: Annotated[int, Field(ge=1)] = 2
    # HAProxy's buffer (tune.bufsize): only a request that fits in one buffer can be retried after
    # it was sent (a replica that died before answering), so it should hold the longest prompt.
    buffer_bytes: Annotated[int, Field(ge=16384)] = 131072
    maxconn: Annotated[int, Field(ge=1)] = 4096
    log: str = "stdout"  # HAProxy log target for the per-request JSON lines: stdout, stderr, /dev/log, udp@host:port
    stats_listen: str | None = None  # e.g. "127.0.0.1:8404": HAProxy's stats page and /metrics
    # Bytes per prompt token before any fit, and the fit: request bytes = overhead + bpt x tokens,
    # fitted per service from the gateway's own log; bucket edges use the `quantile` of bpt so that
    # a request lands in its own input bucket or a higher one, rarely a lower one.
    bytes_per_token: PositiveFloat = 3.0
    bytes_per_token_quantile: Annotated[float, Field(gt=0, lt=0.5)] = 0.02
    bytes_per_token_min_samples: Annotated[int, Field(ge=10)] = 200
    bucket_map_change: Annotated[float, Field(ge=0, lt=1)] = 0.05  # rewrite the bucket map when an edge moves more

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
