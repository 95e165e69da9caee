"""Property-based tests (Hypothesis) over the config schema and the trace readers (issue 13).

What is generated, and what must hold for every example:

- TOML documents built from the config schema itself (daemon/config.py: every
  key, its type and its `Bounds`), then broken: wrong types, non-finite and
  out-of-range numbers, unknown keys. `load_config` returns a Config or raises
  ConfigError naming the file and key paths that exist in the document; a
  Config that loads goes through the preflight without any other exception.
- Configs with in-range values only: when `config check` accepts one, the
  daemon's tick runs on it without failing (the promise of `config check`).
- Request logs: random bytes under every suffix, truncated compressed files,
  random rows in each format (Azure CSV, CSV, JSONL) mixing good and bad fields.
  A read returns rows or raises DemandInputError naming the file; every skipped
  row names file and line; every good row's timestamp (ISO with fractions and
  UTC offsets, epoch s or ms) is read exactly.
- A tailed log that grows by random chunks (partial lines, garbage) never raises
  anything but DemandInputError, and its offset only moves forward.
- Spot traces, offerings tables and simulated-cloud state files: random content
  gives a value or the module's own error.

Deterministic (derandomize, no example database) and bounded (max_examples) so it
fits in CI; the number of examples each property tried is printed at the end
(`pytest -s tests/test_bad_input_properties.py`).
"""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import lzma
import math
import os
import re
import types
import typing
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from daemon.config import Bounds, Config, ConfigError, load_config
from daemon.demand.errors import DemandInputError
from daemon.demand.request_log import read_trace, scan

TRIED: Counter = Counter()


def _settings(n: int):
    # FLEET_PROPERTY_SCALE=10 tries ten times as many examples (a deeper local run; CI uses 1).
    n = max(1, int(n * float(os.environ.get("FLEET_PROPERTY_SCALE", "1"))))
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nproperty examples tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
          + f"; configs {sum(v for k, v in TRIED.items() if k.startswith('config') and ':' not in k)}, traces "
          f"{sum(v for k, v in TRIED.items() if not k.startswith('config') and ':' not in k)}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


_seq = iter(range(10**9))


def _fresh(workdir: Path, suffix: str) -> Path:
    return workdir / f"f{next(_seq)}{suffix}"


# == the config schema as strategies ==========================================================

def _unwrap(ann):
    """(base type, Bounds or None, optional?) of an annotation."""
    bounds, optional = None, False
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            args = typing.get_args(ann)
            bounds = next((m for m in args[1:] if isinstance(m, Bounds)), bounds)
            ann = args[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(ann) if a is not type(None)]
            optional = len(rest) < len(typing.get_args(ann))
            ann = rest[0] if len(rest) == 1 else ann
            if len(rest) != 1:
                return ann, bounds, optional
        else:
            return ann, bounds, optional


def _field_bounds(model: type[BaseModel], name: str):
    f = model.model_fields[name]
    b = next((m for m in f.metadata if isinstance(m, Bounds)), None)
    base, inner, optional = _unwrap(f.annotation)
    return base, b or inner, optional


SAFE_STR = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./", min_size=1, max_size=12)
# Values a key must never hold, whatever its type: the mutations.
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
WRONG = st.one_of(st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True), SAFE_STR,
                  st.lists(st.integers(0, 3), max_size=2), st.builds(dict),  # a fresh {} each time
                  st.just(datetime(1979, 5, 27, 7, 32, tzinfo=timezone.utc)))


def _number(base, b: Bounds | None):
    if base is int:
        lo, hi = (int(b.lo), int(min(b.hi, 10**7))) if b else (0, 1000)
        return st.integers(lo, hi)
    lo, hi = (b.lo, min(b.hi, 1e7)) if b else (0.0, 1000.0)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, exclude_min=bool(b and b.lo_open),
                     exclude_max=bool(b and b.hi_open and hi == b.hi))


def _out_of_range(base, b: Bounds | None):
    if b is None:
        return WRONG
    outs = [b.lo - 1, b.hi * 10 + 1, 1e300 if base is float else 10**30, -1e300 if base is float else -10**30]
    if b.lo_open:
        outs.append(b.lo)
    if b.hi_open:
        outs.append(b.hi)
    if base is int:
        outs = [int(x) for x in outs]
    return st.sampled_from(outs)


def value_for(ann, b: Bounds | None, default, depth: int = 0):
    """A valid-looking value of annotation `ann` (the model's own validators may still refuse it)."""
    base, inner_b, _ = _unwrap(ann)
    b = b or inner_b
    origin = typing.get_origin(base)
    if isinstance(base, type) and issubclass(base, BaseModel):
        return model_doc(base, depth + 1)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(base))
    if origin is list:
        (elem,) = typing.get_args(base)
        e_base, e_b, _ = _unwrap(elem)
        if isinstance(e_base, type) and issubclass(e_base, BaseModel):
            return st.lists(model_doc(e_base, depth + 1), min_size=0, max_size=1)
        if isinstance(default, list) and default:
            return st.one_of(st.builds(lambda: list(default)), st.lists(value_for(elem, None, None, depth + 1), min_size=1,
                                                             max_size=5))
        return st.lists(value_for(elem, None, None, depth + 1), max_size=3)
    if origin is tuple:
        return st.tuples(*[value_for(a, None, None, depth + 1) for a in typing.get_args(base)]).map(list)
    if origin is dict:
        return st.dictionaries(SAFE_STR, SAFE_STR, max_size=2)
    if base is bool:
        return st.booleans()
    if base in (int, float):
        return _number(base, b)
    if base is str:
        return st.just(default) if isinstance(default, str) else SAFE_STR
    return st.builds(lambda: copy.deepcopy(default))  # a fresh copy: mutations must not leak between examples


REQUIRED_EXTRA = {"ServiceConfig": {"name": st.sampled_from(["chat", "code", "a-1"])},
                  "CapacityEntry": {"model": st.just("meta-llama/Llama-2-7b-hf"), "gpu": st.just("A10G"),
                                    "tputs": st.builds(lambda: [[4.0] * 4 for _ in range(4)])},
                  "PrometheusDemandConfig": {"url": st.just("http://127.0.0.1:9")}}
SKIP_RANDOM = {"url", "path", "offerings_file", "spot_trace_dir", "state_file", "endpoints_path", "routes_path",
               "profiles_dir", "model", "name"}  # strings kept at their defaults: preflight reads these


def model_doc(model: type[BaseModel], depth: int = 0):
    """A dict for `model` with a random subset of its keys set to valid-looking values."""
    fields = model.model_fields
    extra = REQUIRED_EXTRA.get(model.__name__, {})

    @st.composite
    def build(draw):
        out = {}
        for name, f in fields.items():
            if name in extra:
                out[name] = draw(extra[name])
                continue
            if f.is_required():
                continue
            if name in SKIP_RANDOM or depth > 3 or not draw(st.booleans()):
                continue
            base, b, _ = _field_bounds(model, name)
            default = f.get_default(call_default_factory=False) if f.default_factory is None else None
            if name == "services":
                out[name] = [draw(model_doc(_unwrap(typing.get_args(base)[0])[0], depth + 1))]
                continue
            out[name] = draw(value_for(f.annotation, b, default, depth))
        return out

    return build()


def _paths(doc, prefix: str = "") -> dict[str, object]:
    """Every key path in a document (tables, array elements and leaves), as config errors write them."""
    out = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out[p] = v
            out.update(_paths(v, p))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            p = f"{prefix}[{i}]"
            out[p] = v
            out.update(_paths(v, p))
    return out


@st.composite
def broken_config(draw):
    """(document, mutated key paths): a schema-built config with 0-3 things wrong in it."""
    doc = draw(model_doc(Config))
    mutated = []
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(doc)
        kind = draw(st.sampled_from(["type", "non_finite", "range", "unknown_key"]))
        tables = [p for p, v in paths.items() if isinstance(v, dict)] + [""]
        if kind == "unknown_key" or not paths:
            where = draw(st.sampled_from(tables))
            key = draw(st.sampled_from(["typo", "tick_interval", "budget", "bogus_key"]))
            target = _get(doc, where)
            target[key] = draw(WRONG)
            mutated.append(f"{where}.{key}" if where else key)
            continue
        leaf = draw(st.sampled_from(sorted(p for p, v in paths.items() if not isinstance(v, (dict, list)))
                                    or sorted(paths)))
        value = WRONG
        if kind in ("non_finite", "range"):
            owner, name = _owner(leaf)
            if owner is not None:
                base, b, _ = _field_bounds(owner, name)
                value = NON_FINITE if kind == "non_finite" else _out_of_range(base, b)
        _set(doc, leaf, draw(value))
        mutated.append(leaf)
    return doc, mutated


def _owner(path: str):
    """(model, field name) that holds the leaf at `path`."""
    model = Config
    parts = [p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path) if not p.startswith("[")]
    for k, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return None, None
        if k == len(parts) - 1:
            return model, part
        base, _, _ = _unwrap(model.model_fields[part].annotation)
        if typing.get_origin(base) is list:
            base, _, _ = _unwrap(typing.get_args(base)[0])
        model = base if isinstance(base, type) and issubclass(base, BaseModel) else None
    return None, None


def _split(path: str):
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path)]


def _get(doc, path: str):
    cur = doc
    for p in _split(path) if path else []:
        cur = cur[p]
    return cur


def _set(doc, path: str, value) -> None:
    parts = _split(path)
    cur = doc
    for p in parts[:-1]:
        cur = cur[p]
    cur[parts[-1]] = value


# -- a TOML writer: inline tables and arrays, every value TOML can hold -------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".e") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


def _error_paths(msg: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^  (<top level>|\S+?): ", msg, flags=re.M)]


@_settings(250)
@given(broken_config())
def test_generated_configs_load_or_fail_clearly(workdir, case):
    doc, mutated = case
    TRIED["configs (broken, from the schema)"] += 1
    p = _fresh(workdir, ".toml")
    p.write_text(to_toml(doc))
    try:
        cfg = load_config(p)
    except ConfigError as e:
        TRIED["configs (broken, from the schema): refused"] += 1
        msg = str(e)
        assert msg.startswith(f"{p}: "), msg
        if "invalid configuration" in msg.splitlines()[0]:
            known = set(_paths(doc)) | {"<top level>"}
            locs = _error_paths(msg)
            assert locs, msg
            for loc in locs:
                assert loc in known, f"error names {loc!r}, not a key of the document: {msg}\n{to_toml(doc)}"
        return
    assert isinstance(cfg, Config)
    # Whatever was mutated was accepted: it must have been valid after all (e.g. a float 1e300 where
    # the range allows it), never a non-finite number.
    for m in mutated:
        v = _get(doc, m) if _exists(doc, m) else None
        assert not (isinstance(v, float) and not math.isfinite(v)), f"{m} = {v} accepted"
    from daemon.preflight import check

    check(cfg, str(p))  # returns problems, raises nothing


def _exists(doc, path: str) -> bool:
    try:
        _get(doc, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


# -- accepted configs run -------------------------------------------------------------------------

RUN_KEYS = {  # numeric keys whose whole range a tick must survive (paths and names stay fixed)
    "loop": ["tick_interval_s", "window_s", "lead_time_s", "history_s", "replan_rate_change", "replan_mix_change",
             "replan_every_s"],
    "policy": ["headroom", "spot", "budget_per_hour", "max_launches_per_tick", "max_terminations_per_tick",
               "drain_s", "scale_down_delay_s", "spot_loss_coverage", "min_on_demand_share", "market_cooldown_s",
               "launch_timeout_s", "max_market_cooldown_s", "backoff_alert_after", "terminate_timeout_s",
               "drain_timeout_s"],
    "solver": ["backend", "gap", "accept_gap", "warm_start", "routing", "slice_factor", "amortize_h",
               "launch_penalty_usd", "disruption_usd", "default_preemptions_per_hour", "unserved_penalty_per_rps",
               "coverage", "spot_locations_per_pool", "max_upfront_scenarios", "decompose"],
}


@st.composite
def runnable_config(draw):
    from daemon.config import LoopConfig, PolicyConfig, SolverConfig

    models = {"loop": LoopConfig, "policy": PolicyConfig, "solver": SolverConfig}
    doc: dict = {}
    for section, keys in RUN_KEYS.items():
        table = {}
        for k in keys:
            if draw(st.integers(0, 2)) == 0:
                base, b, _ = _field_bounds(models[section], k)
                f = models[section].model_fields[k]
                table[k] = draw(value_for(f.annotation, b, f.default))
        doc[section] = table
    doc["solver"]["time_limit_s"] = 5.0
    doc["provider"] = {"simulated": {"launch_latency_s": [draw(st.floats(0, 600)), 600.0],
                                     "stockout_probability": draw(st.floats(0, 1)),
                                     "spot_preemptions_per_hour": draw(st.floats(0, 50))}}
    doc["services"] = [{"name": "chat", "gpus": ["A10G", "L4"], "min_replicas": draw(st.integers(0, 3)),
                        "forecast": {"model": "recent_peak"},
                        "demand": {"demo_days": 0.05, "demo_mean_rps": draw(st.floats(0.1, 30))}}]
    doc["capacity"] = [{"model": "meta-llama/Llama-2-7b-hf", "gpu": g, "tputs": [[draw(st.floats(0.01, 50))] * 4] * 4}
                       for g in ("A10G", "L4")]
    doc["metrics"] = {"enabled": False}
    return doc


@_settings(25)
@given(runnable_config())
def test_configs_that_pass_the_check_run_ticks(workdir, doc):
    """`config check` says ok => the daemon's tick runs on it (the issue's 12 configs broke this)."""
    from daemon.preflight import check, errors
    from daemon.store.migrate import upgrade
    from daemon.wiring import build_system

    TRIED["configs (in range, run)"] += 1
    d = _fresh(workdir, "")
    d.mkdir()
    doc = {"store": {"url": f"sqlite:///{d / 'fleet.db'}"}, "profiles": {"profiles_dir": str(d / "profiles")}, **doc}
    p = d / "fleet.toml"
    p.write_text(to_toml(doc))
    try:
        cfg = load_config(p)
    except ConfigError:
        assume(False)  # a cross-key rule refused it (e.g. leader timings): covered above
        return
    if errors(check(cfg, str(p))):
        TRIED["configs (in range, run): refused by the check"] += 1
        return  # `config check` refuses it: fleetd would not start on it

    class Clock:
        now = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)

        def __call__(self):
            return self.now

    clock = Clock()
    from daemon.wiring import open_store

    store = open_store(cfg)
    upgrade(store.engine)
    system = build_system(cfg, clock=clock, store=store)
    loop = system.loop()
    from daemon.loop.tick import run_tick

    for _ in range(3):
        result = run_tick(loop)
        assert result.outcome != "failed", f"{result.error}\n{p.read_text()}"
        # A plan the planner could not make is a daemon that never acts: the check must refuse it.
        assert result.plan is not None and result.plan.status != "error", \
            f"{result.plan and result.plan.notes}\n{p.read_text()}"
        clock.now += timedelta(seconds=cfg.loop.tick_interval_s)
    store.engine.dispose()


# == traces ======================================================================================

SUFFIXES = [".csv", ".jsonl", ".csv.xz", ".csv.gz", ".csv.bz2", ".log"]


def _expect_clean(p: Path, fn):
    try:
        return fn()
    except DemandInputError as e:
        assert str(p) in str(e), str(e)
        return None


@_settings(200)
@given(st.binary(max_size=4000), st.sampled_from(SUFFIXES), st.sampled_from(["auto", "azure", "jsonl", "csv"]),
       st.sampled_from(["skip", "reject"]))
def test_random_bytes_are_read_or_refused_clearly(workdir, data, suffix, fmt, on_bad):
    TRIED["traces (random bytes)"] += 1
    p = _fresh(workdir, suffix)
    p.write_bytes(data)
    tr = _expect_clean(p, lambda: read_trace(p, fmt=fmt, on_bad_row=on_bad))
    if tr is not None:
        assert all(re.match(rf"{re.escape(str(p))}:\d+: field ", b) for b in tr.bad_rows)
    if not suffix.endswith((".xz", ".gz", ".bz2")):
        _expect_clean(p, lambda: scan(p, fmt, complete=False, max_bytes=97))


def _compress(suffix: str, data: bytes) -> bytes:
    return {".xz": lzma.compress, ".gz": gzip.compress, ".bz2": bz2.compress}[suffix](data)


@_settings(60)
@given(st.sampled_from([".xz", ".gz", ".bz2"]), st.integers(1, 400), st.floats(0, 1, exclude_max=True))
def test_truncated_compressed_traces(workdir, suffix, rows, cut):
    TRIED["traces (truncated compressed)"] += 1
    body = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:{k // 60 % 60:02d}:{k % 60:02d}.{k:07d},{k % 5000},{k % 300}\n" for k in range(rows))
    blob = _compress(suffix, body.encode())
    p = _fresh(workdir, ".csv" + suffix)
    p.write_bytes(blob[: int(len(blob) * cut)])
    tr = _expect_clean(p, lambda: read_trace(p))
    if tr is not None:
        assert len(tr) <= rows


# -- random rows in each format, with the values they must be read as ---------------------------

T_LO, T_HI = 1_500_000_000, 1_900_000_000


@st.composite
def good_row(draw):
    """(epoch seconds, input, output, how the timestamp is written)."""
    whole = draw(st.integers(T_LO, T_HI))
    digits = draw(st.integers(0, 7))
    frac_int = draw(st.integers(0, 10**digits - 1)) if digits else 0
    frac = frac_int / 10**digits if digits else 0.0
    offset_min = draw(st.sampled_from([0, 330, -300, 60 * 14, -60 * 12, 45]))
    style = draw(st.sampled_from(["iso_offset", "iso_z", "iso_naive", "epoch", "epoch_ms"]))
    return whole, frac_int, digits, frac, offset_min, style, draw(st.integers(0, 10**6)), draw(st.integers(0, 10**5))


def _iso(whole: int, frac_int: int, digits: int, offset_min: int, style: str, sep: str = "T") -> str:
    tz = timezone(timedelta(minutes=offset_min)) if style == "iso_offset" else timezone.utc
    local = datetime.fromtimestamp(whole, tz=tz).replace(tzinfo=None)
    text = local.isoformat(sep=sep)
    if digits:
        text += "." + str(frac_int).zfill(digits)
    if style == "iso_offset":
        sign = "+" if offset_min >= 0 else "-"
        text += f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    elif style == "iso_z":
        text += "Z"
    return text


BAD_FIELD = st.one_of(st.just("inf"), st.just("-1"), st.just("nan"), st.just("1e23"), st.just("1" + "0" * 400),
                      st.just("3023-01-01T00:00:00"), st.just(""), st.just("true"), st.just("1.5"),
                      st.text(max_size=20), st.just("\udcff"))


@_settings(150)
@given(st.sampled_from(["azure", "csv", "jsonl"]), st.lists(st.one_of(good_row(), BAD_FIELD.map(lambda b: ("bad", b)),
                                                                       st.binary(max_size=30).map(lambda b: ("raw", b))),
                                                             min_size=1, max_size=30))
def test_random_rows_in_each_format(workdir, fmt, rows):
    TRIED[f"traces (random {fmt} rows)"] += 1
    p = _fresh(workdir, {"azure": ".csv", "csv": ".csv", "jsonl": ".jsonl"}[fmt])
    lines, expected = [], []
    for r in rows:
        if r[0] == "bad":
            val = r[1]
            if fmt == "jsonl":
                lines.append(json.dumps({"timestamp": val, "input_length": 1, "output_length": 2})
                             .encode("utf-8", "surrogateescape"))
            else:
                lines.append(f"{val},1,2".replace("\n", " ").encode("utf-8", "surrogateescape"))
            continue
        if r[0] == "raw":
            lines.append(r[1].replace(b"\n", b" "))
            continue
        whole, frac_int, digits, frac, offset_min, style, a, b = r
        if fmt == "azure" and style.startswith("epoch"):
            style = "iso_naive"  # Azure's TIMESTAMP is always a date and time
        if style.startswith("epoch"):
            # JSONL numbers are epoch milliseconds, CSV numbers epoch seconds.
            ms = frac_int // 10 ** (digits - 3) if digits > 3 else frac_int * 10 ** (3 - digits) if digits else 0
            if fmt == "jsonl":
                ts_val, frac = whole * 1000 + ms, ms / 1000
            else:
                ts_val = f"{whole}.{str(frac_int).zfill(digits)}" if digits else str(whole)
        else:
            ts_val = _iso(whole, frac_int, digits, offset_min, style, sep=" " if fmt == "azure" else "T")
        if fmt == "jsonl":
            lines.append(json.dumps({"timestamp": ts_val, "input_length": a, "output_length": b}).encode())
        else:
            lines.append(f"{ts_val},{a},{b}".encode())
        expected.append((whole + frac, a, b))
    header = {"azure": b"TIMESTAMP,ContextTokens,GeneratedTokens\n", "csv": b"timestamp,input_tokens,output_tokens\n",
              "jsonl": b""}[fmt]
    p.write_bytes(header + b"\n".join(lines) + b"\n")
    tr = _expect_clean(p, lambda: read_trace(p, fmt=fmt))
    for b in (tr.bad_rows if tr is not None else []):
        assert re.match(rf"{re.escape(str(p))}:\d+: field ", b), b
    if tr is None:
        return
    got = sorted((tr.start.timestamp() + t, int(a), int(b)) for t, a, b in zip(tr.t, tr.input_tokens,
                                                                              tr.output_tokens))
    # Every good row is read, at the instant it names (offsets kept, fractions kept).
    want = sorted(expected)
    for w in want:
        assert any(abs(g[0] - w[0]) < 1e-4 and g[1:] == w[1:] for g in got), (w, got[:5], p.read_bytes()[:400])


# -- a log that grows while it is tailed --------------------------------------------------------

@_settings(60)
@given(st.lists(st.one_of(
    st.integers(0, 3000).map(lambda k: json.dumps({"timestamp": (1_700_000_000 + k) * 1000, "input_length": k,
                                                   "output_length": 1}).encode() + b"\n"),
    st.binary(max_size=200), st.just(b"x" * 3000 + b"\n"), st.just(b'{"timestamp": 1')),
    min_size=1, max_size=12))
def test_tailed_log_growing_by_random_chunks(workdir, chunks):
    from daemon.demand.tail import RequestLogTail
    from daemon.domain import BucketGrid

    TRIED["traces (tailed, random appends)"] += 1
    p = _fresh(workdir, ".jsonl")
    tail = RequestLogTail("chat", p, BucketGrid((0, 256), (0, 64)), 60.0, max_bytes=1024)
    now = datetime.fromtimestamp(1_700_010_000, tz=timezone.utc)
    last = 0
    for c in chunks:
        with open(p, "ab") as f:
            f.write(c)
        for _ in range(3):
            try:
                poll = tail.poll(now)
            except DemandInputError as e:
                assert str(p) in str(e)
                break
            assert poll.cursor["offset"] >= last
            last = poll.cursor["offset"]
            tail.commit(poll)
            for msg in poll.problems:
                assert str(p) in msg


# -- spot traces, offerings tables, simulated-cloud state --------------------------------------------

JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=8)),
                       lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=4)), max_leaves=12)


@_settings(120)
@given(st.one_of(JSONISH.map(lambda v: json.dumps(v).encode()),
                 st.builds(lambda g, d: json.dumps({"metadata": {"gap_seconds": g}, "data": d}).encode(), JSONISH,
                           JSONISH),
                 st.binary(max_size=200)))
def test_spot_traces(workdir, data):
    from providers.spot_traces import SpotTraceError, load_trace

    TRIED["traces (spot availability)"] += 1
    p = _fresh(workdir, "_us-east-1a.json")
    p.write_bytes(data)
    try:
        t = load_trace(p)
    except SpotTraceError as e:
        assert str(p) in str(e)
        return
    assert math.isfinite(t.gap_seconds) and t.gap_seconds > 0 and all(math.isfinite(v) and v >= 0 for v in t.values)
    t.available(12345.0)


OFFER_HEADER = "cloud,region,zone,instance_type,gpu,gpu_count,on_demand,spot\n"
CELL = st.one_of(st.sampled_from(["aws", "us-east-1", "", "A10G", "1", "0", "-1", "1.5", "inf", "nan", "1e308", "x",
                                  '"a,b"', "g5.xlarge"]), st.text(max_size=6))


@_settings(120)
@given(st.lists(st.lists(CELL, min_size=0, max_size=10), min_size=0, max_size=6), st.binary(max_size=60))
def test_offerings_tables(workdir, rows, junk):
    from providers.simulated import OfferingsFileError, load_offerings

    TRIED["traces (offerings tables)"] += 1
    p = _fresh(workdir, ".csv")
    p.write_bytes(OFFER_HEADER.encode() + "\n".join(",".join(r) for r in rows).encode("utf-8", "surrogateescape")
                  + b"\n" + junk)
    try:
        offers = load_offerings(p)
    except OfferingsFileError as e:
        assert str(p) in str(e)
        return
    assert offers and all(math.isfinite(o.price_per_hour) and o.price_per_hour > 0 for o in offers)


@_settings(80)
@given(st.one_of(JSONISH, st.fixed_dictionaries({"epoch": st.one_of(st.none(), st.text(max_size=30),
                                                                    st.just("2026-01-01T00:00:00+00:00")),
                                                 "last": st.one_of(st.none(), st.just("2026-01-01T00:00:00")),
                                                 "rng": JSONISH, "instances": JSONISH})))
def test_simulated_state_files(workdir, doc):
    from daemon.config import SimulatedProviderConfig
    from providers.simulated import OfferingsFileError, SimulatedProvider

    TRIED["traces (simulated-cloud state)"] += 1
    p = _fresh(workdir, ".json")
    p.write_text(json.dumps(doc))
    try:
        SimulatedProvider(SimulatedProviderConfig(state_file=str(p)), lambda: datetime(2026, 1, 2, tzinfo=timezone.utc))
    except OfferingsFileError as e:
        assert str(p) in str(e)


# -- every numeric key, exhaustively: non-finite and out-of-range values name key and range -------

def _numeric_keys(model: type[BaseModel] = Config, prefix: str = ""):
    """(key path, model, field) of every number in the schema (lists of tables at their first element)."""
    for name, f in model.model_fields.items():
        base, b, _ = _unwrap(f.annotation)
        path = f"{prefix}.{name}" if prefix else name
        if typing.get_origin(base) is list:
            elem, _, _ = _unwrap(typing.get_args(base)[0])
            if isinstance(elem, type) and issubclass(elem, BaseModel):
                yield from _numeric_keys(elem, f"{path}[0]")
            continue
        if isinstance(base, type) and issubclass(base, BaseModel):
            yield from _numeric_keys(base, path)
        elif base in (int, float):
            yield path, model, name


def _base_doc_for(path: str) -> dict:
    """The smallest document in which `path` exists (required keys of the tables on the way filled)."""
    doc: dict = {}
    if path.startswith("services[0]"):
        doc["services"] = [{"name": "chat"}]
        if ".demand.prometheus" in path:
            doc["services"][0]["demand"] = {"kind": "prometheus", "prometheus": {"url": "http://127.0.0.1:9"}}
    if path.startswith("capacity[0]"):
        doc["capacity"] = [{"model": "m", "gpu": "A10G", "tputs": [[1.0] * 4 for _ in range(4)]}]
    if path.startswith("quotas[0]"):
        doc["quotas"] = [{"max_gpus": 1}]
    return doc


def test_every_numeric_key_refuses_non_finite_and_out_of_range(workdir):
    keys = list(_numeric_keys())
    assert len(keys) > 60  # the walk found the schema's numbers
    for path, model, name in keys:
        base, b, _ = _field_bounds(model, name)
        assert b is not None, f"{path}: a number without Bounds (every number must say its range)"
        bad = [math.inf, -math.inf, math.nan] if base is float else []
        bad += [b.lo - 1, b.hi * 10 + 1, True]
        if base is int:
            bad = [int(b.lo) - 1, int(b.hi) * 10 + 1, True, 1.0, "1"]
        for value in bad:
            TRIED["configs (every numeric key x bad value)"] += 1
            doc = _base_doc_for(path)
            _set_path(doc, path, value)
            p = _fresh(workdir, ".toml")
            p.write_text(to_toml(doc))
            with pytest.raises(ConfigError) as e:
                load_config(p)
            msg = str(e.value)
            assert msg.startswith(f"{p}: invalid configuration") and f"  {path}: " in msg, (path, value, msg)
            if not isinstance(value, (bool, str)) and not (base is int and isinstance(value, float)):
                assert b.text() in msg, (path, value, msg)  # the error says the allowed range


def _set_path(doc: dict, path: str, value) -> None:
    parts = _split(path)
    cur = doc
    for k, p in enumerate(parts[:-1]):
        nxt = parts[k + 1]
        if isinstance(p, int):
            cur = cur[p]
            continue
        if p not in cur:
            cur[p] = [{}] if isinstance(nxt, int) else {}
        cur = cur[p]
    cur[parts[-1]] = value
