"""The real provider: SkyPilot 0.14.1 (catalog prices, launches, status, teardown).

What it does, in the terms of `providers.base.Provider`:

- `offerings_snapshot()` reads SkyPilot's own catalog in-process (`sky.catalog`), for the
  configured clouds, regions and GPU types, on-demand and spot, per region and
  zone, and keeps the list with the time it was read;
  it is re-read when older than `catalog_refresh_s`. Slurm clusters (SkyPilot's
  `slurm` cloud) are offered per partition; partitions named in
  `preemptible_partitions` are offered as market "spot" because a Slurm job
  there can be preempted, which is what spot means to the planner.
- `launch()` submits `sky.launch` and returns the request id at once; the id is
  kept and polled by later syncs (`api_status`), never waited on.
  `retry_until_up` is off: a failed placement is the planner's to re-plan, not
  SkyPilot's to retry elsewhere. Resources are pinned to the offering's cloud,
  region, zone, instance type and market, so SkyPilot cannot move the instance
  to a place the plan did not price.
- `list()` is the status sync: one `sky.status(refresh=...)` over all clusters,
  finished launch requests collected, health endpoints probed. A spot cluster
  that vanished, shows STOPPED, or INIT with an abnormal reason after it was up
  becomes PREEMPTED (FAILED for on-demand) with the reason; a spot market that
  failed or was preempted is put in a cooldown (`unavailable_markets`), as
  SkyServe's SpotHedge does per zone. RUNNING means the health endpoint answered.
- `terminate()` submits `sky.down` (idempotent; a cluster that does not exist is
  already terminated). Draining is the reconciler's job before it calls this.
- Clusters under our prefix that the store does not know are listed like any
  other; the loop's sync finds them and applies `orphans` (adopt or terminate).
- Names: the daemon's instance names in and out; the SkyPilot cluster is
  `<cluster_prefix>-<name>` (the prefix is applied here and only here).

`sky` is imported lazily: the CLI must start fast, and SkyPilot reads its
catalog location from HOME at import time (tests point HOME at a temporary one).
"""

from __future__ import annotations

import math
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog

from daemon.config import Config, SkyPilotProviderConfig
from daemon.domain import Market, Offering
from providers.base import (
    FailureKind,
    InstanceStatus,
    LaunchError,
    LaunchRequest,
    OfferingsSnapshot,
    ProviderInstance,
)

log = structlog.get_logger("providers.skypilot")

# Clouds whose "instance types" are virtual (SkyPilot derives them from cpus/memory/GPUs):
# the offering names the GPU shape and the launch asks for accelerators + cpus instead.
VIRTUAL_INSTANCE_CLOUDS = frozenset({"slurm", "kubernetes", "ssh"})
# SkyPilot rejects use_spot on Slurm ("Spot instances are not supported in Slurm"):
# there, the preemptible partition (zone) is what makes an instance "spot".
NO_SPOT_FLAG_CLOUDS = frozenset({"slurm", "kubernetes", "ssh"})

# No cloud metadata probes (169.254.169.254) and no usage telemetry to usage-v2.skypilot.co.
_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "True", "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}


def _sky():
    """Import SkyPilot lazily, with cloud metadata probes off (no 169.254.169.254)."""
    for k, v in _ENV.items():
        os.environ.setdefault(k, v)
    import sky  # noqa: PLC0415

    return sky


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------
# Offerings
# ---------------------------------------------------------------------------


def _gpu_regex(gpus: Iterable[str]) -> str | None:
    names = sorted(set(gpus))
    if not names:
        return None
    return "^(?:" + "|".join(re.escape(g) for g in names) + ")$"


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _slurm_label(gpu: str, count: int) -> str:
    """Offering.instance_type on virtual-instance clouds: the GPU shape, e.g. "A10G:1"."""
    return f"{gpu}:{count}"


def read_catalog_offerings(
    clouds: Iterable[str],
    gpus: Iterable[str],
    regions: Iterable[str] = (),
    preemptible_partitions: Iterable[str] = ("spot",),
    cpus: str | None = None,
) -> tuple[list[Offering], list[str]]:
    """Offerings from SkyPilot's catalog; returns (offerings, per-cloud errors).

    Prices: `list_accelerators` gives, per region, the on-demand and the
    cheapest-zone spot price of the whole instance (host + GPU). Zones then come
    from `get_region_zones_for_instance_type`, and each zone's price from
    `get_hourly_cost` (plus the GPU's own zone price where the GPU is attached
    to a host type, as on GCP n1 + T4: there the instance price alone is lower
    than the region price list_accelerators reports).
    """
    sky = _sky()
    from sky import catalog  # noqa: PLC0415

    gpu_list = list(gpus)
    name_filter = _gpu_regex(gpu_list)
    region_set = set(regions)
    out: dict[str, Offering] = {}
    errors: list[str] = []
    for cloud in clouds:
        cloud = cloud.lower()
        try:
            if cloud == "slurm":
                offers = _slurm_offerings(sky, name_filter, region_set, set(preemptible_partitions), cpus)
            else:
                offers = _cloud_offerings(catalog, cloud, name_filter, region_set)
        except Exception as e:  # noqa: BLE001 - one broken cloud must not hide the others
            errors.append(f"{cloud}: {type(e).__name__}: {e}")
            log.warning("offerings_cloud_failed", cloud=cloud, error=str(e))
            continue
        for o in offers:
            prev = out.get(o.key)
            if prev is None or o.price_per_hour < prev.price_per_hour:
                out[o.key] = o
    return sorted(out.values(), key=lambda o: (o.gpu, o.price_per_hour, o.key)), errors


def _cloud_offerings(catalog, cloud: str, name_filter: str | None, regions: set[str]) -> list[Offering]:
    if name_filter is None:
        return []
    infos = catalog.list_accelerators(
        gpus_only=True,
        name_filter=name_filter,
        clouds=cloud,
        all_regions=True,
        require_price=True,
        case_sensitive=True,
    )
    table = _ZonePrices.load(cloud)
    zones_cache: dict[tuple[str, bool], dict[str, list[str]]] = {}

    def zones_of(itype: str, region: str, spot: bool) -> list[str] | None:
        if table is not None:
            return table.zones(itype, region, spot)
        key = (itype, spot)
        if key not in zones_cache:
            got = catalog.get_region_zones_for_instance_type(itype, use_spot=spot, clouds=cloud)
            zones_cache[key] = {r.name: [z.name for z in (r.zones or [])] for r in got}
        return zones_cache[key].get(region)

    offers: list[Offering] = []
    for rows in infos.values():
        for info in rows:
            itype = info.instance_type
            if not itype or (regions and info.region not in regions):
                continue
            count = int(round(float(info.accelerator_count)))
            if count < 1 or float(info.accelerator_count) != count:
                continue  # fractional GPUs are not a replica shape
            for market, region_price in ((Market.ON_DEMAND, _finite(info.price)), (Market.SPOT, _finite(info.spot_price))):
                if region_price is None:
                    continue
                spot = market is Market.SPOT
                zones = zones_of(itype, info.region, spot)
                if zones is None:
                    continue  # SkyPilot would not place it there
                for zone in zones or [None]:
                    price = region_price
                    if zone is not None and table is not None:
                        price = table.price(itype, info.accelerator_name, count, info.region, zone, spot)
                        if price is None:
                            continue  # e.g. GCP: the host type is in this zone but the GPU is not
                    offers.append(
                        Offering(
                            cloud=cloud,
                            region=info.region,
                            zone=zone,
                            instance_type=itype,
                            gpu=info.accelerator_name,
                            gpu_count=count,
                            market=market,
                            price_per_hour=round(price, 6),
                        )
                    )
    return offers


class _ZonePrices:
    """Per-zone prices from the catalog frame SkyPilot itself loaded, indexed once.

    `sky.catalog.get_hourly_cost` filters the whole frame per call (~10 ms on
    GCP's 31k rows), which made a full read take 20 s; one pass over the frame
    is far cheaper. The frame is SkyPilot's (same file, same AWS zone-name
    mapping); only the indexing is ours. Prices of GPUs attached to a host type
    (GCP n1 + T4: GPU rows with no InstanceType) are added to the host's.
    Clouds without zones in the catalog (Azure, Lambda) use region prices.
    """

    _MODULES = {"aws": "aws_catalog", "gcp": "gcp_catalog", "azure": "azure_catalog", "lambda": "lambda_catalog"}

    def __init__(self, hosts: dict, gpus: dict):
        self._hosts = hosts  # (itype, region, zone) -> (price, spot, has_gpu)
        self._gpus = gpus  # (gpu, count, region, zone) -> (price, spot)
        self._zones: dict[tuple[str, str, bool], list[str]] = {}
        for (itype, region, zone), (price, spot_price, _) in hosts.items():
            for spot, value in ((False, price), (True, spot_price)):
                if value is not None:
                    self._zones.setdefault((itype, region, spot), []).append(zone)
        for v in self._zones.values():
            v.sort()

    @classmethod
    def load(cls, cloud: str) -> "_ZonePrices | None":
        import importlib  # noqa: PLC0415

        name = cls._MODULES.get(cloud)
        if name is None:
            return None
        try:
            mod = importlib.import_module(f"sky.catalog.{name}")
            df = mod._get_df() if hasattr(mod, "_get_df") else mod._df  # noqa: SLF001
            cols = ["InstanceType", "AcceleratorName", "AcceleratorCount", "Price", "SpotPrice", "Region", "AvailabilityZone"]
            df = df[cols]
        except Exception:  # noqa: BLE001 - no zone column (Azure, Lambda) or another layout
            return None
        df = df[df["AvailabilityZone"].notna()]
        hosts: dict = {}
        gpus: dict = {}
        for itype, acc, cnt, price, spot, region, zone in df.itertuples(index=False, name=None):
            p, s = _finite(price), _finite(spot)
            if isinstance(itype, str) and itype:
                key = (itype, region, zone)
                old = hosts.get(key)
                hosts[key] = (_min(old[0] if old else None, p), _min(old[1] if old else None, s), isinstance(acc, str))
            elif isinstance(acc, str):
                try:
                    n = int(float(cnt))
                except (TypeError, ValueError):
                    continue
                key = (acc, n, region, zone)
                old = gpus.get(key)
                gpus[key] = (_min(old[0] if old else None, p), _min(old[1] if old else None, s))
        return cls(hosts, gpus) if hosts else None

    def zones(self, itype: str, region: str, spot: bool) -> list[str] | None:
        return self._zones.get((itype, region, spot))

    def price(self, itype: str, gpu: str, count: int, region: str, zone: str, spot: bool) -> float | None:
        host = self._hosts.get((itype, region, zone))
        if host is None:
            return None
        p = host[1] if spot else host[0]
        if p is None:
            return None
        if not host[2]:  # the host type carries no GPU: add the attached GPU's price
            g = self._gpus.get((gpu, count, region, zone))
            gp = (g[1] if spot else g[0]) if g else None
            if gp is None:
                return None
            p += gp
        return p


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _slurm_offerings(sky, name_filter, regions: set[str], preemptible: set[str], cpus: str | None) -> list[Offering]:
    """One offering per (cluster, partition, GPU shape) from the live cluster.

    Prices come from SkyPilot's own `slurm.pricing` config (~/.sky/config.yaml,
    per cluster and partition); without it SkyPilot prices Slurm at $0.
    """
    from sky import catalog  # noqa: PLC0415
    from sky.provision.slurm import utils as slurm_utils  # noqa: PLC0415

    offers: list[Offering] = []
    for cluster in sky.clouds.Slurm.existing_allowed_clusters(silent=True):
        if regions and cluster not in regions:
            continue
        partitions = slurm_utils.get_partitions(cluster)
        infos = catalog.list_accelerators(
            gpus_only=True, name_filter=name_filter, region_filter=cluster, clouds="slurm", require_price=False
        )
        ncpu = float((cpus or "1").rstrip("+"))
        for gpu, rows in infos.items():
            for info in rows:
                count = int(info.accelerator_count)
                node_parts = {p.strip().rstrip("*") for p in str(info.region or "").split(",") if p.strip()}
                for part in partitions:
                    if node_parts and part not in node_parts:
                        continue
                    vtype = slurm_utils.SlurmInstanceType(ncpu, 0, count, gpu).name
                    price = catalog.get_hourly_cost(vtype, use_spot=False, region=cluster, zone=part, clouds="slurm")
                    offers.append(
                        Offering(
                            cloud="slurm",
                            region=cluster,
                            zone=part,
                            instance_type=_slurm_label(gpu, count),
                            gpu=gpu,
                            gpu_count=count,
                            market=Market.SPOT if part in preemptible else Market.ON_DEMAND,
                            price_per_hour=round(float(price or 0.0), 6),
                        )
                    )
    return offers


# ---------------------------------------------------------------------------
# Plan -> SkyPilot task
# ---------------------------------------------------------------------------


def offering_to_resources(offering: Offering, cfg: SkyPilotProviderConfig):
    """`sky.Resources` pinned to exactly the offering the plan priced."""
    sky = _sky()
    infra = "/".join(p for p in (offering.cloud, offering.region, offering.zone) if p)
    kwargs: dict[str, Any] = {
        "infra": infra,
        "accelerators": {offering.gpu: offering.gpu_count},
    }
    if offering.cloud in VIRTUAL_INSTANCE_CLOUDS:
        kwargs["cpus"] = cfg.cpus or "1"
    else:
        kwargs["instance_type"] = offering.instance_type  # fixes vCPUs: cfg.cpus does not apply
        # The router reaches the server from outside: open the serving port.
        kwargs["ports"] = [cfg.serve_port]
    if offering.cloud not in NO_SPOT_FLAG_CLOUDS:
        kwargs["use_spot"] = offering.market is Market.SPOT
    res = sky.Resources(**kwargs)
    # Check region/zone/instance type against the catalog now (the constructor
    # defers it): a stale plan fails here, with SkyPilot's own message. Slurm
    # and Kubernetes validation asks the live cluster: the launch reports that.
    if offering.cloud not in VIRTUAL_INSTANCE_CLOUDS:
        res.validate()
    return res


class TaskTemplateError(ValueError):
    pass


def render_run(cfg: SkyPilotProviderConfig, request: LaunchRequest) -> tuple[str, str]:
    """Fill {model} {port} {service} {name} in the configured setup/run commands."""
    values = {"model": request.model, "port": cfg.serve_port, "service": request.service, "name": request.name}
    out = []
    for field_name in ("setup", "run"):
        text = getattr(cfg, field_name)
        try:
            out.append(text.format(**values))
        except (KeyError, IndexError, ValueError) as e:
            raise TaskTemplateError(
                f"provider.skypilot.{field_name}: bad placeholder {e} in {text!r}; "
                f"allowed: {', '.join('{' + k + '}' for k in values)}"
            ) from None
    return out[0], out[1]


def build_task(request: LaunchRequest, cfg: SkyPilotProviderConfig):
    """The service's serving task, as SkyPilot runs it on the new cluster."""
    sky = _sky()
    setup, run = render_run(cfg, request)
    envs = dict(cfg.envs)
    envs.update(
        FLEET_INSTANCE=request.name,
        FLEET_SERVICE=request.service,
        FLEET_MODEL=request.model,
        FLEET_PORT=str(cfg.serve_port),
        FLEET_OFFERING=request.offering.key,
    )
    task = sky.Task(name=request.service, setup=setup or None, run=run, envs=envs)
    task.set_resources(offering_to_resources(request.offering, cfg))
    return task


# ---------------------------------------------------------------------------
# Failure classification
# ---------------------------------------------------------------------------

# Codes and phrases from the clouds' APIs as SkyPilot surfaces them
# (sky/backends/cloud_vm_ray_backend.py FailoverCloudErrorHandlerV1/V2 and the
# provisioners' ProvisionerError.errors). Credentials are checked first: a cloud
# we cannot reach says nothing about its capacity.
_CREDENTIALS = (
    "unauthorizedoperation", "authfailure", "invalidclienttokenid", "expiredtoken",
    "iam_permission_denied", "permission denied", "clientauthenticationerror",
    "authorizationfailed", "invalidauthenticationtoken", "credentials",
    "which is not enabled", "is not enabled", "not enabled. to enable access",
    "no cloud access", "identity",
)
_QUOTA = (
    "quota", "vcpulimitexceeded", "maxspotinstancecountexceeded", "instancelimitexceeded",
    "limitexceeded", "requestlimitexceeded", "operationnotallowed",
)
_NO_CAPACITY = (
    "insufficientinstancecapacity", "insufficientcapacity", "insufficient capacity",
    "zone_resource_pool_exhausted", "resource_pool_exhausted", "no more capacity",
    "skunotavailable", "allocationfailed", "zonalallocationfailed",
    "overconstrainedallocationrequest", "spotmaxpricetoolow", "capacity",
    "not enough", "unavailable", "out of stock", "no launchable resource",
    "timed out", "timeout", "preempted",
)


def _error_texts(exc: BaseException) -> list[str]:
    texts = [type(exc).__name__, str(exc)]
    for e in getattr(exc, "failover_history", None) or []:
        texts += _error_texts(e)
    for err in getattr(exc, "errors", None) or []:
        if isinstance(err, dict):
            texts += [str(err.get("code", "")), str(err.get("message", ""))]
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        texts += _error_texts(exc.__cause__)
    return texts


def classify_failure(exc: BaseException) -> FailureKind:
    """Map a SkyPilot launch error to the kind the planner reacts to."""
    name = type(exc).__name__
    if name in {"CloudUserIdentityError", "NoCloudAccessError", "InvalidCloudCredentials",
                "ClusterOwnerIdentityMismatchError", "PermissionDeniedError",
                "ApiServerAuthenticationError", "NoWorkspaceAccessError"}:
        return FailureKind.CREDENTIALS
    text = " ".join(_error_texts(exc)).lower()
    if any(p in text for p in _CREDENTIALS):
        return FailureKind.CREDENTIALS
    if any(p in text for p in _QUOTA):
        return FailureKind.QUOTA
    if any(p in text for p in _NO_CAPACITY):
        return FailureKind.NO_CAPACITY
    # SkyPilot raises ResourcesUnavailableError when it could not place the
    # cluster where asked; absent any other clue that is a capacity problem.
    if "resourcesunavailableerror" in text:
        return FailureKind.NO_CAPACITY
    return FailureKind.OTHER


def _short(exc: BaseException, limit: int = 400) -> str:
    msg = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# The SkyPilot client edge
# ---------------------------------------------------------------------------


class SkyClient:
    """The few SkyPilot SDK calls the provider makes; each is one request to the API server.

    Everything that talks to SkyPilot goes through here, so a test can stand in
    for the API server at this seam (and the end-to-end test uses this class).
    """

    def __init__(self, refresh: str = "force"):
        self.refresh = refresh

    def launch(self, task, cluster_name: str) -> str:
        sky = _sky()
        return sky.launch(
            task,
            cluster_name=cluster_name,
            retry_until_up=False,
            idle_minutes_to_autostop=None,
            down=False,
        )

    def down(self, cluster_name: str) -> str:
        return _sky().down(cluster_name)

    def cancel(self, request_ids: list[str]) -> None:
        _sky().api_cancel(request_ids, silent=True)

    def request_states(self, request_ids: list[str]) -> dict[str, str]:
        """request id -> PENDING/RUNNING/SUCCEEDED/FAILED/CANCELLED (absent = unknown)."""
        if not request_ids:
            return {}
        out = {}
        for p in _sky().api_status(request_ids=list(request_ids)):
            status = getattr(p, "status", None)
            out[p.request_id] = str(getattr(status, "value", status)).upper()
        return out

    def result(self, request_id: str) -> Any:
        """Result of a finished request (returns at once); raises its error."""
        return _sky().get(request_id)

    def status(self, names: list[str] | None = None, refresh: str | None = None) -> list[dict]:
        """Cluster records (all of ours when names is None), refreshed per `refresh` (default: config)."""
        sky = _sky()
        mode = {"force": sky.StatusRefreshMode.FORCE, "auto": sky.StatusRefreshMode.AUTO,
                "none": sky.StatusRefreshMode.NONE}[refresh or self.refresh]
        records = sky.get(sky.status(cluster_names=names, refresh=mode))
        return [_record_dict(r) for r in records]


def _record_dict(r) -> dict:
    keys = ("name", "status", "handle", "launched_at", "last_event", "init_status_reason",
            "init_kind", "last_creation_yaml", "cloud", "region")
    d = {}
    for k in keys:
        try:
            d[k] = r[k]
        except (KeyError, TypeError, AttributeError):
            d[k] = getattr(r, k, None)
    st = d.get("status")
    d["status"] = str(getattr(st, "value", st) or "").upper() or None
    return d


# ---------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------

_FINISHED = {"SUCCEEDED", "FAILED", "CANCELLED"}


@dataclass
class _Tracked:
    name: str
    service: str
    offering: Offering
    status: InstanceStatus
    since: datetime
    launch_rid: str | None = None
    launch_submitted_at: datetime | None = None
    launch_done_at: datetime | None = None
    ever_up: bool = False  # the cluster reached UP
    endpoint: str | None = None
    healthy: bool = False
    failure: FailureKind | None = None
    detail: str = ""
    down_rid: str | None = None
    down_requested_at: datetime | None = None
    adopted: bool = False
    events: list[dict] = field(default_factory=list)
    loss: dict | None = None  # zone, lifetime, price and reason of a preemption/loss


class SkyPilotProvider:
    """`Provider` on SkyPilot. Not thread-safe across ticks: one tick at a time calls it."""

    name = "skypilot"

    def __init__(
        self,
        cfg: SkyPilotProviderConfig,
        clock: Callable[[], datetime] = _utcnow,
        gpus: Iterable[str] | None = None,
        client: SkyClient | None = None,
        health_check: Callable[[str, float], bool] | None = None,
    ):
        self.cfg = cfg
        self._clock = clock
        self._gpus = sorted(set(cfg.gpus or gpus or []))
        self._client = client or SkyClient(cfg.status_refresh)
        self._health = health_check or http_health_check
        self._tracked: dict[str, _Tracked] = {}
        self._cooldown: dict[str, tuple[datetime, str]] = {}  # offering key -> (until, reason)
        self._snapshot: OfferingsSnapshot | None = None
        self._last_records: dict[str, dict] = {}
        self._last_sync_at: datetime | None = None
        self._lock = threading.Lock()
        self.last_sync_seconds: float | None = None

    @classmethod
    def from_config(cls, cfg: Config, clock: Callable[[], datetime] = _utcnow, **kw) -> "SkyPilotProvider":
        """Offer the GPU types the services allow unless provider.skypilot.gpus says otherwise."""
        gpus = {g for s in cfg.services for g in s.gpus}
        return cls(cfg.provider.skypilot, clock=clock, gpus=gpus, **kw)

    # -- names -------------------------------------------------------------

    def cluster_name(self, instance_name: str) -> str:
        """`<prefix>-<instance name>`; the daemon passes a deterministic instance name.

        Every method takes and reports the daemon's instance names; the prefix
        only marks our clusters in SkyPilot (orphan detection, several fleets
        sharing one SkyPilot).
        """
        return f"{self.cfg.cluster_prefix}-{instance_name}"

    def instance_name(self, cluster_name: str) -> str:
        return cluster_name[len(self.cfg.cluster_prefix) + 1:] if self._ours(cluster_name) else cluster_name

    def _ours(self, cluster: str) -> bool:
        return cluster.startswith(self.cfg.cluster_prefix + "-")

    # -- offerings ---------------------------------------------------------

    def refresh_offerings(self) -> OfferingsSnapshot:
        t0 = self._clock()
        import time  # noqa: PLC0415

        w0 = time.monotonic()
        offers, errors = read_catalog_offerings(
            self.cfg.clouds, self._gpus, self.cfg.regions, self.cfg.preemptible_partitions, self.cfg.cpus
        )
        snap = OfferingsSnapshot(t0, tuple(offers), time.monotonic() - w0, tuple(errors))
        self._snapshot = snap
        log.info("offerings_read", count=len(offers), seconds=round(snap.seconds, 3), errors=len(errors))
        return snap

    def offerings_snapshot(self) -> OfferingsSnapshot:
        snap = self._snapshot
        if snap is None or (self._clock() - snap.read_at).total_seconds() >= self.cfg.catalog_refresh_s:
            snap = self.refresh_offerings()
        return snap

    def offerings(self) -> list[Offering]:
        return list(self.offerings_snapshot().offerings)

    # -- cooldowns -----------------------------------------------------------

    def mark_unavailable(self, offering_key: str, reason: str, now: datetime | None = None) -> None:
        now = now or self._clock()
        until = now + timedelta(seconds=self.cfg.market_cooldown_s)
        prev = self._cooldown.get(offering_key)
        if prev is None or prev[0] < until:
            self._cooldown[offering_key] = (until, reason)
        log.info("market_cooldown", offering=offering_key, until=until.isoformat(), reason=reason)

    def unavailable_markets(self, now: datetime | None = None) -> frozenset[str]:
        now = now or self._clock()
        return frozenset(k for k, (until, _) in self._cooldown.items() if until > now)

    # -- launch --------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> None:
        name = self.cluster_name(request.name)
        now = self._clock()
        t = self._tracked.get(name)
        if t is not None and t.down_rid is not None and t.status is not InstanceStatus.TERMINATED:
            raise LaunchError(FailureKind.OTHER, f"{name} is being torn down; use a new instance name")
        if t is not None and t.status in (InstanceStatus.PENDING, InstanceStatus.RUNNING):
            return  # idempotent by name
        if t is None:
            # Not in memory (daemon restarted between writing its intent and now):
            # if SkyPilot already has the cluster, adopt it instead of launching
            # again, which would start a second server on it.
            try:
                existing = self._client.status(names=[name], refresh="none")
            except Exception as e:  # noqa: BLE001 - cannot tell: the launch itself will say
                existing = []
                log.warning("launch_precheck_failed", cluster=name, error=_short(e))
            rec = next((r for r in existing if r.get("name") == name), None)
            if rec is not None:
                self._adopt(name, rec, now)
                self._tracked[name].service = self._tracked[name].service or request.service
                if self._tracked[name].offering.cloud == "?":
                    self._tracked[name].offering = request.offering
                log.info("launch_adopted_existing", cluster=name, status=rec.get("status"))
                return
        key = request.offering.key
        if key in self.unavailable_markets(now):
            until, reason = self._cooldown[key]
            raise LaunchError(FailureKind.NO_CAPACITY, f"{key} in cooldown until {until.isoformat()}: {reason}")
        try:
            task = build_task(request, self.cfg)
        except TaskTemplateError as e:
            raise LaunchError(FailureKind.OTHER, str(e)) from None
        except Exception as e:  # noqa: BLE001 - SkyPilot validates resources at construction
            raise LaunchError(classify_failure(e), f"invalid resources for {key}: {_short(e)}") from None
        try:
            rid = self._client.launch(task, name)
        except Exception as e:  # noqa: BLE001 - refused outright (server down, validation)
            kind = classify_failure(e)
            log.warning("launch_refused", cluster=name, offering=key, kind=str(kind), error=_short(e))
            raise LaunchError(kind, f"sky.launch({name}) refused: {_short(e)}") from None
        self._tracked[name] = _Tracked(
            name=name,
            service=request.service,
            offering=request.offering,
            status=InstanceStatus.PENDING,
            since=now,
            launch_rid=str(rid),
            launch_submitted_at=now,
            detail="launch submitted",
        )
        log.info("launch_submitted", cluster=name, offering=key, request_id=str(rid))

    # -- terminate -----------------------------------------------------------

    def terminate(self, name: str) -> None:
        name = self.cluster_name(name)
        now = self._clock()
        t = self._tracked.get(name)
        if t is not None and t.down_rid is not None:
            return  # a down is in flight (or done): idempotent
        if t is not None and t.launch_rid is not None and t.launch_done_at is None:
            # The launch holds the cluster; cancel it so the down is not queued behind it.
            try:
                self._client.cancel([t.launch_rid])
            except Exception as e:  # noqa: BLE001
                log.warning("launch_cancel_failed", cluster=name, error=_short(e))
        try:
            rid = self._client.down(name)
        except Exception as e:  # noqa: BLE001 - retried by the next terminate
            log.warning("down_refused", cluster=name, error=_short(e))
            raise
        if t is None:
            t = _Tracked(name=name, service="", offering=_unknown_offering(), status=InstanceStatus.PENDING, since=now)
            self._tracked[name] = t
        t.down_rid = str(rid)
        t.down_requested_at = now
        t.detail = "down submitted"
        log.info("down_submitted", cluster=name, request_id=str(rid))

    # -- sync ----------------------------------------------------------------

    def list(self) -> list[ProviderInstance]:
        """One status sync: finished requests, `sky.status` with refresh, health probes."""
        import time  # noqa: PLC0415

        w0 = time.monotonic()
        with self._lock:
            self._collect_requests()
            records = {r["name"]: r for r in self._client.status() if r.get("name") and self._ours(r["name"])}
            now = self._clock()
            self._last_records = records
            self._last_sync_at = now
            for name, rec in records.items():
                if name not in self._tracked:
                    self._adopt(name, rec, now)
            self._apply_records(records, now)
            self._probe_health(now)
            out = [self._instance(t) for t in self._tracked.values() if t.offering.cloud != "?"
                   or t.status is InstanceStatus.TERMINATED]
            self._forget_old(now)
        self.last_sync_seconds = time.monotonic() - w0
        return out

    def _collect_requests(self) -> None:
        pending = {t.launch_rid: t for t in self._tracked.values() if t.launch_rid and t.launch_done_at is None}
        downs = {t.down_rid: t for t in self._tracked.values()
                 if t.down_rid and t.status is not InstanceStatus.TERMINATED and not t.detail.startswith("down done")}
        states = self._client.request_states(list(pending) + list(downs))
        now = self._clock()
        for rid, t in pending.items():
            st = states.get(rid)
            if st is None:
                # The API server does not know the request (its state was lost):
                # stop waiting on it; the cluster record decides from here.
                t.launch_done_at = now
                t.detail = "launch request unknown to the API server"
                log.warning("launch_request_lost", cluster=t.name, request_id=rid)
                continue
            if st not in _FINISHED:
                continue
            t.launch_done_at = now
            try:
                result = self._client.result(rid)
            except Exception as e:  # noqa: BLE001 - the launch's own error
                if t.down_rid is not None:
                    continue  # we cancelled it to tear down
                kind = classify_failure(e)
                self._set(t, InstanceStatus.FAILED, now, f"launch failed: {_short(e)}", failure=kind)
                if t.offering.market is Market.SPOT or kind is FailureKind.NO_CAPACITY:
                    self.mark_unavailable(t.offering.key, f"launch failed ({kind})", now)
                log.warning("launch_failed", cluster=t.name, offering=t.offering.key, kind=str(kind), error=_short(e))
                continue
            handle = result[1] if isinstance(result, tuple) and len(result) == 2 else None
            if handle is not None:
                t.endpoint = _endpoint_of(handle, self.cfg.serve_port)
                t.ever_up = True
            t.detail = "cluster up; waiting for health endpoint"
            log.info("launch_done", cluster=t.name, offering=t.offering.key,
                     seconds=(now - t.launch_submitted_at).total_seconds() if t.launch_submitted_at else None)
        for rid, t in downs.items():
            st = states.get(rid)
            if st not in _FINISHED:
                continue
            took = (now - t.down_requested_at).total_seconds() if t.down_requested_at else None
            try:
                self._client.result(rid)
                t.detail = "down done"
                log.info("down_done", cluster=t.name, seconds=took)
            except Exception as e:  # noqa: BLE001
                if type(e).__name__ == "ClusterDoesNotExist":
                    t.detail = "down done (cluster did not exist)"
                    log.info("down_done", cluster=t.name, seconds=took, existed=False)
                else:
                    # Let a later terminate() retry.
                    t.detail = f"down failed: {_short(e)}"
                    t.down_rid = None
                    log.warning("down_failed", cluster=t.name, error=_short(e))

    def _adopt(self, name: str, rec: dict, now: datetime) -> None:
        """A cluster under our prefix we have no memory of (daemon restart, or an orphan)."""
        handle = rec.get("handle")
        offering = self._offering_of_handle(handle) or _unknown_offering()
        service = _service_of(rec) or ""
        t = _Tracked(name=name, service=service, offering=offering, status=InstanceStatus.PENDING, since=now,
                     adopted=True, detail="found in SkyPilot")
        if rec.get("status") == "UP":
            t.ever_up = True
            t.endpoint = _endpoint_of(handle, self.cfg.serve_port) if handle is not None else None
        self._tracked[name] = t
        log.info("cluster_found", cluster=name, offering=offering.key, status=rec.get("status"))

    def _offering_of_handle(self, handle) -> Offering | None:
        lr = getattr(handle, "launched_resources", None)
        if lr is None or lr.cloud is None:
            return None
        cloud = str(lr.cloud).lower()
        accs = lr.accelerators or {}
        if not accs:
            return None
        gpu, count = next(iter(accs.items()))
        count = int(count)
        if cloud in NO_SPOT_FLAG_CLOUDS:
            market = Market.SPOT if lr.zone in self.cfg.preemptible_partitions else Market.ON_DEMAND
        else:
            market = Market.SPOT if lr.use_spot else Market.ON_DEMAND
        itype = _slurm_label(gpu, count) if cloud in VIRTUAL_INSTANCE_CLOUDS else (lr.instance_type or "")
        key_probe = Offering(cloud, lr.region or "", lr.zone, itype, gpu, count, market, 0.0)
        price = 0.0
        if self._snapshot is not None:
            for o in self._snapshot.offerings:
                if o.key == key_probe.key:
                    price = o.price_per_hour
                    break
        return replace(key_probe, price_per_hour=price)

    def _apply_records(self, records: dict[str, dict], now: datetime) -> None:
        for t in self._tracked.values():
            if t.status in (InstanceStatus.TERMINATED,):
                continue
            rec = records.get(t.name)
            if t.down_rid is not None:
                if rec is None and t.detail.startswith("down done"):
                    self._set(t, InstanceStatus.TERMINATED, now, t.detail)
                continue
            if t.status in (InstanceStatus.PREEMPTED, InstanceStatus.FAILED):
                continue  # final until terminated; the reconciler tears it down
            in_flight = t.launch_rid is not None and t.launch_done_at is None
            status = rec.get("status") if rec else None
            spot = t.offering.market is Market.SPOT
            lost = InstanceStatus.PREEMPTED if spot else InstanceStatus.FAILED
            if in_flight:
                if status == "UP":
                    t.ever_up = True
                continue  # the launch request will tell how it went
            if rec is None:
                if t.ever_up or t.adopted:
                    self._lose(t, lost, now, "cluster vanished after status refresh (all nodes gone)")
                elif t.launch_done_at is not None:
                    self._lose(t, InstanceStatus.FAILED, now, "cluster not found after launch finished")
                continue
            if status == "UP":
                t.ever_up = True
                if t.endpoint is None:
                    t.endpoint = _endpoint_of(rec.get("handle"), self.cfg.serve_port)
            elif status == "STOPPED":
                self._lose(t, lost, now, f"cluster STOPPED: {rec.get('last_event') or 'instances stopped by the cloud'}")
            elif status == "INIT":
                reason = rec.get("init_status_reason") or ""
                if reason or (t.ever_up and _abnormal(rec.get("last_event"))):
                    self._lose(t, lost, now, f"cluster INIT (abnormal): {reason or rec.get('last_event')}")

    def _lose(self, t: _Tracked, status: InstanceStatus, now: datetime, detail: str) -> None:
        lifetime = (now - t.launch_submitted_at).total_seconds() if t.launch_submitted_at else None
        full = f"{detail}; zone={t.offering.location}"
        if lifetime is not None:
            full += f"; lifetime_s={lifetime:.0f}"
        full += f"; price_per_hour={t.offering.price_per_hour}"
        self._set(t, status, now, full, failure=None if status is InstanceStatus.PREEMPTED else FailureKind.OTHER)
        t.healthy = False
        t.loss = {
            "status": str(status),
            "at": now.isoformat(),
            "reason": detail,
            "offering": t.offering.key,
            "zone": t.offering.location,
            "market": str(t.offering.market),
            "lifetime_s": lifetime,
            "price_per_hour": t.offering.price_per_hour,
        }
        if t.offering.market is Market.SPOT:
            self.mark_unavailable(t.offering.key, f"{status}: {detail}", now)
        log.warning("instance_lost", cluster=t.name, status=str(status), offering=t.offering.key,
                    zone=t.offering.location, lifetime_s=lifetime, price_per_hour=t.offering.price_per_hour,
                    detail=detail)

    def _set(self, t: _Tracked, status: InstanceStatus, now: datetime, detail: str,
             failure: FailureKind | None = None) -> None:
        if t.status is not status:
            t.events.append({"at": now.isoformat(), "from": str(t.status), "to": str(status), "detail": detail})
            t.since = now
        t.status = status
        t.detail = detail
        if failure is not None or status is not InstanceStatus.FAILED:
            t.failure = failure

    def _probe_health(self, now: datetime) -> None:
        todo = [t for t in self._tracked.values()
                if t.status in (InstanceStatus.PENDING, InstanceStatus.RUNNING) and t.down_rid is None
                and t.ever_up and t.endpoint and (t.launch_rid is None or t.launch_done_at is not None)]
        if not todo:
            return
        url = lambda t: t.endpoint.rstrip("/") + "/" + self.cfg.health_path.lstrip("/")  # noqa: E731
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as ex:
            results = list(ex.map(lambda t: self._health(url(t), self.cfg.health_timeout_s), todo))
        for t, ok in zip(todo, results):
            t.healthy = bool(ok)
            if ok and t.status is InstanceStatus.PENDING:
                self._set(t, InstanceStatus.RUNNING, now, "health endpoint answered")
                log.info("instance_healthy", cluster=t.name, endpoint=t.endpoint,
                         seconds_since_launch=(now - t.launch_submitted_at).total_seconds()
                         if t.launch_submitted_at else None)
            elif not ok and t.status is InstanceStatus.RUNNING:
                t.detail = f"health endpoint not answering since {now.isoformat()} (kept out of routing)"

    def _instance(self, t: _Tracked) -> ProviderInstance:
        return ProviderInstance(
            name=self.instance_name(t.name),
            status=t.status,
            offering_key=t.offering.key if t.offering.cloud != "?" else None,
            endpoint=t.endpoint if t.status is InstanceStatus.RUNNING else None,
            failure=t.failure,
            detail=t.detail,
            since=t.since,
            healthy=t.status is InstanceStatus.RUNNING and t.healthy,
        )

    def _forget_old(self, now: datetime) -> None:
        horizon = timedelta(hours=1)
        for name in [n for n, t in self._tracked.items()
                     if t.status is InstanceStatus.TERMINATED and now - t.since > horizon]:
            del self._tracked[name]

    # -- endpoints -----------------------------------------------------------

    def healthy_endpoints(self, service: str | None = None) -> dict[str, list[str]]:
        """Pool (e.g. "A10Gx1") -> base URLs of RUNNING instances whose health check passed last sync."""
        out: dict[str, list[str]] = {}
        for t in sorted(self._tracked.values(), key=lambda t: t.name):
            if t.status is InstanceStatus.RUNNING and t.healthy and t.endpoint and t.down_rid is None:
                if service is None or t.service == service:
                    out.setdefault(t.offering.pool, []).append(t.endpoint)
        return out

    # -- introspection for the reconciler / tests ---------------------------

    def history(self, name: str) -> list[dict]:
        t = self._tracked.get(self.cluster_name(name))
        return list(t.events) if t else []

    def loss(self, name: str) -> dict | None:
        """Structured record of a preemption/loss (zone, lifetime_s, price_per_hour, reason), for the store."""
        t = self._tracked.get(self.cluster_name(name))
        return dict(t.loss) if t and t.loss else None

    def tracked_offering(self, name: str) -> Offering | None:
        t = self._tracked.get(self.cluster_name(name))
        return t.offering if t else None


def _unknown_offering() -> Offering:
    return Offering("?", "?", None, "?", "?", 1, Market.ON_DEMAND, 0.0)


def _abnormal(event: str | None) -> bool:
    if not event:
        return False
    e = event.lower()
    return any(w in e for w in ("terminated", "preempt", "abnormal", "not healthy", "unhealthy", "down", "lost"))


def _endpoint_of(handle, port: int) -> str | None:
    ip = getattr(handle, "head_ip", None)
    if not ip:
        ips = getattr(handle, "cached_external_ips", None) or []
        ip = ips[0] if ips else None
    return f"http://{ip}:{port}" if ip else None


def _service_of(rec: dict) -> str | None:
    text = rec.get("last_creation_yaml") or ""
    m = re.search(r"^name:\s*(\S+)\s*$", text, flags=re.M)
    return m.group(1).strip("'\"") if m else None


def http_health_check(url: str, timeout_s: float) -> bool:
    """True when GET url answers 2xx within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - our own replicas
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
