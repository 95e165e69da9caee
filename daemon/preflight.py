"""Preflight: what a valid config still needs before the daemon can run it.

`daemon/config.py` checks a file on its own (types, ranges, closed sets). What it
cannot see is the world the config points at: a store URL whose driver is not
installed, a SQLite file under a regular file, an offerings table that does not
parse, a request log whose directory does not exist, a service that no offering
and no capacity profile can serve. Each of these made `fleetd` die with a
traceback, or worse run and never act (a $0 fleet "optimal" with 0 instances).

`check(cfg, source)` returns every problem it finds, each naming the key path
and what is allowed; `fleetctl config check FILE [--connect]` prints them and
fleetd refuses to start on the first. With `connect`, the database server (and a
Prometheus feed) must answer too. Nothing here writes: it looks, opens and reads.

Problems of level "warning" are worth knowing but do not stop the daemon
(a GPU type with no offering while others serve the service).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from daemon.config import Config
from daemon.redact import mask_url

STORE_URLS = ("sqlite:///PATH (a file; sqlite://// for an absolute path), sqlite:// (in memory), "
              "or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database (sqlite.org/fileformat.html)
TRACE_PROBE_BYTES = 1 << 20  # a trace's format is checked on its first MiB; the whole file is read at start


@dataclass(frozen=True)
class Problem:
    key: str  # key path in the config, e.g. "services[0].demand.path"
    message: str
    level: Literal["error", "warning"] = "error"

    def line(self, source: str) -> str:
        return f"{source}: {self.key}: {self.message}"


class PreflightError(Exception):
    """A config the daemon cannot run; str() is one line naming file, key and problem."""

    def __init__(self, problems: list[Problem], source: str):
        self.problems, self.source = problems, source
        errors = [p for p in problems if p.level == "error"]
        more = f" (and {len(errors) - 1} more: run `fleetctl config check {source}`)" if len(errors) > 1 else ""
        super().__init__(errors[0].line(source) + more)


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]


def check_or_raise(cfg: Config, source: str = "<config>", *, connect: bool = False) -> list[Problem]:
    """The problems (warnings only) of a config the daemon can run; PreflightError otherwise."""
    found = check(cfg, source, connect=connect)
    if errors(found):
        raise PreflightError(found, source)
    return found


def startup_refusal(cfg: Config, path) -> str | None:
    """fleetd's check at start: None, or the one line it refuses with (the database must answer)."""
    source = str(path) if path is not None else "<built-in defaults>"
    try:
        found = check_or_raise(cfg, source, connect=True)
    except PreflightError as e:
        return str(e)
    import structlog

    for p in found:
        structlog.get_logger("fleetd").warning("config_warning", key=p.key, problem=p.message)
    return None


def check(cfg: Config, source: str = "<config>", *, connect: bool = False, replay: bool = False) -> list[Problem]:
    """Every problem the daemon would meet running `cfg` (see module docstring).

    `replay`: for `fleetctl simulate`, which brings its own store and always uses
    the simulated provider; the store and the live-only paths are not checked.
    """
    out: list[Problem] = []
    if not replay:
        out += check_store(cfg.store.url, connect=connect)
        for key, path in (("loop.endpoints_path", cfg.loop.endpoints_path),
                          ("solver.routes_path", cfg.solver.routes_path)):
            if path:
                out += _writable_file(key, path, "the daemon writes it after every tick")
    offerings, sim_problems = _simulated_offerings(cfg, replay)
    out += sim_problems
    if not replay and cfg.provider.kind == "skypilot" and connect:
        offerings, sky_problems = _skypilot_offerings(cfg)
        out += sky_problems
    out += _profiles_dir(cfg)
    out += _capacity(cfg, offerings)
    out += _timeouts(cfg, replay)
    for i, svc in enumerate(cfg.services):
        out += _demand(cfg, i, connect=connect and not replay, replay=replay)
        out += _forecast_model(i, svc.forecast.model)
    return out


# -- the store -------------------------------------------------------------------------------

def store_url_problem(url: str) -> str | None:
    """Why a store URL cannot work (None: its form and driver are fine). Never connects."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if not url or not url.strip():
        return f"empty database URL; expected {STORE_URLS}"
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return f"{mask_url(url)!r} is not a database URL; expected {STORE_URLS}"
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        return f"{mask_url(url)}: database {backend!r} is not supported; expected {STORE_URLS}"
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        return f"{mask_url(url)}: unknown driver {u.drivername!r}; expected {STORE_URLS}"
    try:
        dialect.import_dbapi()
    except ImportError as e:
        hint = " (use postgresql+psycopg://, psycopg 3 comes with gpufleet)" if backend == "postgresql" else ""
        return f"{mask_url(url)}: driver {u.drivername!r} is not installed ({e}){hint}"
    if backend == "postgresql" and not u.host and not u.query.get("host"):
        return f"{mask_url(url)}: no host; expected {STORE_URLS}"
    return None


def sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" \
            and not u.database.startswith("file:"):
        return Path(u.database)
    return None


def check_store(url: str, *, connect: bool = False, key: str = "store.url") -> list[Problem]:
    problem = store_url_problem(url)
    if problem:
        return [Problem(key, problem)]
    path = sqlite_file(url)
    if path is not None:
        return [Problem(key, m) for m in sqlite_file_problems(path)]
    if connect:
        problem = connect_problem(url)
        if problem:
            return [Problem(key, problem)]
    return []


def sqlite_file_problems(path: Path) -> list[str]:
    """A SQLite store must be a database file (or nothing yet) in a directory the daemon can write
    (SQLite writes its -wal and -shm files beside it)."""
    out = []
    if path.exists():
        if path.is_dir():
            return [f"{path} is a directory, not a SQLite database file"]
        if not path.is_file():
            return [f"{path} is not a regular file"]
        if not os.access(path, os.R_OK | os.W_OK):
            out.append(f"{path}: the database file is not readable and writable by this user")
        else:
            try:
                with open(path, "rb") as f:
                    head = f.read(16)
            except OSError as e:
                return [f"{path}: cannot read: {e.strerror}"]
            if head and head != SQLITE_MAGIC:
                out.append(f"{path} is not a SQLite database (its first bytes are {head[:16]!r})")
    out += _writable_dir(path.parent, f"the directory of {path}")
    return out


def connect_problem(url: str, timeout_s: float = 5.0) -> str | None:
    """Whether the database server answers (`SELECT 1`); one line with the URL masked if not."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from daemon.redact import redact, url_secrets

    args = {"connect_timeout": int(max(1, timeout_s))} if make_url(url).get_backend_name() == "postgresql" else {}
    engine = create_engine(url, connect_args=args)
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except Exception as e:  # the driver's own error types differ; each becomes one line
        return f"{mask_url(url)}: cannot connect: {redact(first_line(e), url_secrets(url))}"
    finally:
        engine.dispose()
    return None


def first_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (SQLAlchemy adds a
    background link and the SQL after the driver's text)."""
    inner = getattr(e, "orig", None) or e
    lines = [x.strip() for x in str(inner).strip().splitlines() if x.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# -- files -----------------------------------------------------------------------------------

def _writable_dir(d: Path, what: str) -> list[str]:
    d = d if str(d) else Path(".")
    if not d.exists():
        up = d
        while not up.exists() and up != up.parent:
            up = up.parent
        if up.exists() and not up.is_dir():
            return [f"{what} is under {up}, which is a regular file, not a directory"]
        return [f"{what}, {d}, does not exist (create it first)"]
    if not d.is_dir():
        return [f"{what} is under {d}, which is a regular file, not a directory"]
    if not os.access(d, os.W_OK | os.X_OK):
        return [f"{what}, {d}, is not writable by this user"]
    return []


def _writable_file(key: str, path: str, why: str) -> list[Problem]:
    p = Path(path)
    if p.is_dir():
        return [Problem(key, f"{p} is a directory; expected a file path ({why})")]
    if p.exists() and not os.access(p, os.W_OK):
        return [Problem(key, f"{p} is not writable by this user ({why})")]
    return [Problem(key, f"{m} ({why})") for m in _writable_dir(p.parent, f"the directory of {p}")]


def _readable_file(key: str, path: str, what: str) -> Problem | None:
    p = Path(path)
    if not p.exists():
        return Problem(key, f"{p}: no such file ({what})")
    if not p.is_file():
        return Problem(key, f"{p} is not a regular file ({what})")
    if not os.access(p, os.R_OK):
        return Problem(key, f"{p} is not readable by this user ({what})")
    return None


# -- the provider --------------------------------------------------------------------------

def _simulated_offerings(cfg: Config, replay: bool):
    """The simulated cloud's offerings after its cloud filter, and what is wrong with its files.

    Offerings are None where the provider is SkyPilot (its catalog is read only with --connect).
    """
    from providers.simulated import OfferingsFileError, load_offerings
    from providers.spot_traces import SpotTraceError, load_trace_dir

    sim = cfg.provider.simulated
    used = replay or cfg.provider.kind == "simulated"
    out: list[Problem] = []
    offerings = None
    if sim.offerings_file:
        bad = _readable_file("provider.simulated.offerings_file", sim.offerings_file, "the offerings table")
        if bad:
            out.append(bad)
    if not out:
        try:
            offerings = load_offerings(sim.offerings_file)
        except OfferingsFileError as e:
            out.append(Problem("provider.simulated.offerings_file", str(e)))
    if offerings is not None and sim.clouds:
        known = sorted({o.cloud for o in offerings})
        for j, c in enumerate(sim.clouds):
            if c not in known:
                out.append(Problem(f"provider.simulated.clouds[{j}]", f"{c!r} is in no row of the offerings table "
                                   f"(clouds there: {', '.join(known)})"))
        offerings = [o for o in offerings if o.cloud in sim.clouds]
    if sim.spot_trace_dir:
        try:
            load_trace_dir(sim.spot_trace_dir)
        except SpotTraceError as e:
            out.append(Problem("provider.simulated.spot_trace_dir", str(e)))
    if sim.state_file and used and not replay:
        out += _writable_file("provider.simulated.state_file", sim.state_file,
                              "the simulated cloud rewrites it on every call")
        if Path(sim.state_file).is_file() and not out:
            from providers.simulated import SimulatedProvider

            try:
                SimulatedProvider(sim, lambda: datetime.now(timezone.utc))  # reads the state; writes nothing
            except OfferingsFileError as e:
                out.append(Problem("provider.simulated.state_file", str(e)))
            except Exception as e:  # noqa: BLE001 - whatever a corrupt state does, it is this key's problem
                out.append(Problem("provider.simulated.state_file",
                                   f"{sim.state_file}: unreadable simulated-cloud state: {first_line(e)}"))
    if not used:
        # Not the provider in use: its problems would not stop the daemon.
        out = [Problem(p.key, p.message, "warning") for p in out]
        return None, out
    return offerings, out


def _skypilot_offerings(cfg: Config):
    try:
        from providers.skypilot import read_catalog_offerings

        sky = cfg.provider.skypilot
        gpus = sky.gpus or sorted({g for s in cfg.services for g in s.gpus})
        offers, errs = read_catalog_offerings(sky.clouds, gpus, sky.regions, sky.preemptible_partitions, sky.cpus)
    except Exception as e:  # noqa: BLE001
        return None, [Problem("provider.skypilot", f"cannot read the SkyPilot catalog: {first_line(e)}", "warning")]
    return offers, [Problem("provider.skypilot.clouds", f"catalog: {e}", "warning") for e in errs]


# -- capacity --------------------------------------------------------------------------------

def _timeouts(cfg: Config, replay: bool) -> list[Problem]:
    """A launch timeout the simulated cloud's launches always exceed fails every launch forever."""
    if not (replay or cfg.provider.kind == "simulated"):
        return []
    slowest = cfg.provider.simulated.launch_latency_s[1]
    if cfg.policy.launch_timeout_s <= slowest:
        return [Problem("policy.launch_timeout_s", f"{cfg.policy.launch_timeout_s:g} s is not above the simulated "
                        f"cloud's slowest launch (provider.simulated.launch_latency_s = {slowest:g} s): launches "
                        "would time out", "warning" if cfg.policy.launch_timeout_s > cfg.provider.simulated
                        .launch_latency_s[0] else "error")]
    return []


def _profiles_dir(cfg: Config) -> list[Problem]:
    p = Path(cfg.profiles.profiles_dir)
    if p.exists() and not p.is_dir():
        return [Problem("profiles.profiles_dir", f"{p} is not a directory")]
    return []


def _pool_gpu(pool: str) -> str:
    return pool.rsplit("x", 1)[0]


def _capacity(cfg: Config, offerings) -> list[Problem]:
    """Every service must have at least one pool with both capacity and an offering.

    `offerings` None: the provider's catalog is not known here (SkyPilot without
    --connect); capacity is still checked.
    """
    from daemon.capacity import build_capacity
    from daemon.capacity.hardware import canonical_gpu
    from daemon.loop.no_capacity import serves

    try:
        report = build_capacity(cfg)
    except Exception as e:  # noqa: BLE001 - a profile or estimator failure is the config's problem here
        return [Problem("capacity", f"cannot build the capacity table: {first_line(e)}")]
    table = report.table
    why: dict[tuple[str, str], str] = {}
    for w in report.warnings:
        if w["event"] == "capacity.excluded":
            why[(w["service"], w["gpu"])] = w["reason"]
    offered_gpus = {o.gpu for o in offerings} if offerings is not None else None
    offered_pools = {o.pool for o in offerings} if offerings is not None else None
    explicit = {e.gpu for e in cfg.capacity}
    out: list[Problem] = []
    for i, svc in enumerate(cfg.services):
        pools = [p for p in table.pools(svc.name) if _pool_gpu(p) in svc.gpus and serves(table.get(svc.name, p))]
        for p in table.pools(svc.name):
            if _pool_gpu(p) in svc.gpus and not serves(table.get(svc.name, p)):
                why.setdefault((svc.name, _pool_gpu(p)), f"{p} serves no bucket within the SLO (ttft_p99_s "
                               f"{svc.slo.ttft_p99_s}, tpot_p99_ms {svc.slo.tpot_p99_ms}): every MaxTput is 0")
        usable = [p for p in pools if offered_pools is None or p in offered_pools]
        reasons = []
        for j, gpu in enumerate(svc.gpus):
            known = canonical_gpu(gpu) is not None or gpu in explicit or (offered_gpus is not None and gpu in offered_gpus)
            has_cap = [p for p in pools if _pool_gpu(p) == gpu]
            has_offer = offered_gpus is None or gpu in offered_gpus
            if not known:
                reasons.append(f"{gpu}: unknown GPU type")
                out.append(Problem(f"services[{i}].gpus[{j}]", f"unknown GPU type {gpu!r}: no offering, no "
                                   "[[capacity]] table and no GPU spec has it (check the spelling, e.g. A10G, L4, "
                                   "A100-80GB, H100)"))
            elif not has_cap:
                reasons.append(f"{gpu}: no capacity ({why.get((svc.name, gpu), 'no table, profile or estimate')})")
            elif not has_offer:
                reasons.append(f"{gpu}: no offering of the provider has it")
            elif offered_pools is not None and not any(p in offered_pools for p in has_cap):
                reasons.append(f"{gpu}: capacity for {', '.join(has_cap)} but no offering of that shape")
        if not usable:
            out.append(Problem(f"services[{i}]", f"service {svc.name!r} can get no capacity at all, so it would "
                               "run a $0 fleet of 0 instances: " + "; ".join(reasons or ["no GPU type usable"])))
        elif reasons:
            out += [Problem(f"services[{i}].gpus", f"service {svc.name!r}: {r}; planned on "
                            f"{', '.join(usable)} only", "warning") for r in reasons
                    if not r.endswith("unknown GPU type")]
    return out


# -- demand ----------------------------------------------------------------------------------

def _demand(cfg: Config, i: int, *, connect: bool, replay: bool) -> list[Problem]:
    from daemon.demand.errors import DemandInputError
    from daemon.demand.request_log import first_line as log_head
    from daemon.demand.request_log import detect_format, is_compressed, make_parser, scan

    d = cfg.services[i].demand
    key = f"services[{i}].demand.path"
    if d.kind == "trace":
        bad = _readable_file(key, d.path, "the trace to replay")
        if bad:
            return [bad]
        try:
            res = scan(d.path, d.format, d.columns or None, complete=True, on_bad_row=d.on_bad_row,
                       max_bytes=TRACE_PROBE_BYTES)
        except DemandInputError as e:
            return [Problem(key, str(e))]
        if not res.rows:
            first = f"; first problem: {res.bad[0]}" if res.bad else ""
            return [Problem(key, f"{d.path}: no valid request in its first {TRACE_PROBE_BYTES >> 20} MiB{first}")]
        return []
    if d.kind == "request-log" and not replay:
        p = Path(d.path)
        if is_compressed(p):
            return [Problem(key, f"{p}: a compressed file cannot be tailed (kind = 'trace' replays it)")]
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            return [Problem(key, f"{p}: its directory {parent} does not exist (the log may appear later, its "
                            "directory must be there)")]
        if not os.access(parent, os.R_OK | os.X_OK):
            return [Problem(key, f"{p}: its directory {parent} is not readable by this user")]
        if p.exists():
            bad = _readable_file(key, d.path, "the request log to tail")
            if bad:
                return [bad]
            try:
                head = log_head(p)
                if head.strip():
                    fmt = d.format if d.format != "auto" else detect_format(p, head)
                    if fmt != "jsonl" and head.endswith(b"\n"):
                        make_parser(p, fmt, head.decode("utf-8", "replace").strip(), d.columns or None)
            except DemandInputError as e:
                return [Problem(key, str(e))]
        return []
    if d.kind == "prometheus" and connect:
        import httpx

        url = d.prometheus.url.rstrip("/") + "/api/v1/status/buildinfo"
        try:
            r = httpx.get(url, timeout=min(d.prometheus.timeout_s, 10.0))
            r.raise_for_status()
        except Exception as e:  # noqa: BLE001
            return [Problem(f"services[{i}].demand.prometheus.url",
                            f"{mask_url(d.prometheus.url)}: Prometheus does not answer: {first_line(e)}")]
    return []


def _forecast_model(i: int, model: str) -> list[Problem]:
    if model in ("auto", "recent_peak"):
        return []
    from forecast.models import CANDIDATES

    if model not in CANDIDATES:
        return [Problem(f"services[{i}].forecast.model", f"unknown model {model!r}; allowed: auto, recent_peak, "
                        + ", ".join(CANDIDATES))]
    return []
