"""Cost audits afterwards (`fleetctl audit`): what the fleet cost, what preemptions cost, what it saved.

- Instance-hours and cost come from lifecycle intervals x the price in effect:
  an instance bills from the provider's acceptance (`launched_at`) to its end,
  at the price stored at launch (`instances.price_per_hour`, never recomputed);
  grouped by `state` or `reason`, each billable interval between two lifecycle
  events counts under the state it was in and the reason of the transition that
  began it (launch_accepted: booting, became_ready: serving, scale_down: draining...).
  `launch_reason` groups by why the instance was launched (launch_requested, replaced).
- Preemptions: spot instances the cloud took back in the window, and the
  capacity they cost: from the preemption until the next instance of the same
  service launched within REPLACEMENT_WINDOW_S after it was serving (matched in
  time order, one replacement per preemption). A preemption the planner did not
  replace (demand fell) costs no capacity-hours and is counted as not replaced.
- Savings against an all-on-demand fleet of the same shape: every hour priced
  at the on-demand price of the same instance type in the same region, or else
  the cheapest on-demand offering with the same GPU type and count in the region,
  or else anywhere. That reference is, in order: the price recorded at launch
  (`instances.on_demand_price_per_hour`), a prices file (`--prices`, the
  offerings CSV format), the on-demand prices this fleet itself paid, the bundled
  catalog (providers/data/offerings.csv). The report counts which basis each
  instance got.

Plain SQL through daemon/store/fastread.py: a year of one-minute ticks is 525,600
decisions; the audit reads instances and their events, not the decisions table
(only a count by outcome, over an index). bench/audit_bench.py times it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from daemon.store.fastread import Reader, bind_ts, ts

INSTANCE_KEYS = ("service", "cloud", "region", "zone", "gpu", "market", "instance_type")
INTERVAL_KEYS = ("state", "reason", "launch_reason")
GROUP_KEYS = INSTANCE_KEYS + INTERVAL_KEYS
BILLABLE = ("provisioning", "running", "draining", "terminating")
REPLACEMENT_WINDOW_S = 3600.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class PriceBook:
    """On-demand reference prices in layers, the first layer that knows a key wins."""

    layers: list[tuple[str, list]] = field(default_factory=list)  # (name, [(cloud, region, type, gpu, n, price)])
    _index: list | None = None

    def add(self, name: str, rows: list[tuple]) -> "PriceBook":
        self.layers.append((name, [r for r in rows if r[5] and r[5] > 0]))
        self._index = None
        return self

    def _build(self) -> list:
        idx = []
        for name, rows in self.layers:
            by_type, by_shape_region, by_shape = {}, {}, {}
            for cloud, region, itype, gpu, n, price in rows:
                k = (cloud, region, itype)
                by_type[k] = min(price, by_type.get(k, price))
                k = (cloud, region, gpu, int(n))
                by_shape_region[k] = min(price, by_shape_region.get(k, price))
                k = (gpu, int(n))
                by_shape[k] = min(price, by_shape.get(k, price))
            idx.append((name, by_type, by_shape_region, by_shape))
        return idx

    def reference(self, inst: dict) -> tuple[float | None, str]:
        """(on-demand $/h of the same shape, basis) for one instance row."""
        if inst.get("on_demand_price_per_hour"):
            return float(inst["on_demand_price_per_hour"]), "recorded at launch"
        if inst["market"] == "on-demand":
            return float(inst["price_per_hour"]), "on-demand itself"
        if self._index is None:
            self._index = self._build()
        for level, key in ((1, (inst["cloud"], inst["region"], inst["instance_type"])),
                           (2, (inst["cloud"], inst["region"], inst["gpu"], int(inst["gpu_count"]))),
                           (3, (inst["gpu"], int(inst["gpu_count"])))):
            for name, *tables in self._index:
                p = tables[level - 1].get(key)
                if p is not None:
                    what = ("same instance type, region", "same GPU shape, region", "same GPU shape, any region")
                    return p, f"{what[level - 1]} ({name})"
        return None, "none"


def catalog_rows(path: str | None = None) -> list[tuple]:
    """On-demand rows (cloud, region, type, gpu, count, $/h) of an offerings CSV (the format of
    providers/data/offerings.csv; default: that bundled table). The csv module only: the audit
    must not pay for importing the provider and its config models."""
    import csv
    from importlib import resources
    from pathlib import Path

    if path is None:
        text, src = resources.files("providers").joinpath("data/offerings.csv").read_text(), "providers/data/offerings.csv"
    else:
        try:
            text, src = Path(path).read_text(), str(path)
        except OSError as e:
            raise ValueError(f"{path}: cannot read prices: {e.strerror}") from None
    reader = csv.DictReader(text.splitlines())
    missing = {"cloud", "region", "instance_type", "gpu", "gpu_count", "on_demand"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"{src}: missing columns {', '.join(sorted(missing))}")
    out = []
    for line, row in enumerate(reader, start=2):
        try:
            price, n = float(row["on_demand"]), int(row["gpu_count"])
        except (TypeError, ValueError):
            raise ValueError(f"{src}:{line}: on_demand and gpu_count must be numbers") from None
        if price <= 0:
            raise ValueError(f"{src}:{line}: on_demand must be positive")
        out.append((row["cloud"], row["region"], row["instance_type"], row["gpu"], n, price))
    return out


def price_book(r: Reader, prices_file: str | None = None, bundled: bool = True) -> PriceBook:
    """The reference layers: --prices file, this fleet's own on-demand prices, the bundled catalog."""
    book = PriceBook()
    if prices_file:
        book.add(prices_file, catalog_rows(prices_file))
    book.add("this fleet's on-demand prices", [tuple(x) for x in r.rows(
        "SELECT cloud, region, instance_type, gpu, gpu_count, min(price_per_hour) FROM instances "
        "WHERE market = 'on-demand' GROUP BY cloud, region, instance_type, gpu, gpu_count")])
    if bundled:
        book.add("bundled catalog", catalog_rows(None))
    return book


def _has_column(r: Reader, table: str, column: str) -> bool:
    if r.dialect == "sqlite":
        return any(row[1] == column for row in r.rows(f"PRAGMA table_info({table})"))
    if r.dialect == "postgresql":
        return r.one("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(?) AND attname = ? AND NOT attisdropped",
                     table, column) is not None
    return r.one("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                 table, column) is not None


def _hours(a: datetime, b: datetime) -> float:
    return max(0.0, (b - a).total_seconds() / 3600.0)


def audit(r: Reader, since: datetime | None = None, until: datetime | None = None,
          by: tuple[str, ...] = ("service", "gpu", "market"), prices: PriceBook | None = None) -> dict:
    bad = [b for b in by if b not in GROUP_KEYS]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}; allowed: {', '.join(GROUP_KEYS)}")
    if not by:
        raise ValueError(f"--by needs at least one of {', '.join(GROUP_KEYS)}")
    # An explicit window is half-open, [since, until), so consecutive audits never count an event
    # twice; the default end is the last decision, included (a replay's virtual clock ends there).
    closed = until is None
    if until is None:
        last = r.one("SELECT max(at) FROM decisions")
        until = ts(last[0]) if last and last[0] is not None else datetime.now(timezone.utc)
    lo = since or _EPOCH
    if until <= lo:
        raise ValueError(f"--until ({until.isoformat()}) must be after --since ({lo.isoformat()})")
    prices = prices if prices is not None else price_book(r)
    od_col = "on_demand_price_per_hour" if _has_column(r, "instances", "on_demand_price_per_hour") else "NULL"
    cols = ("id", "service", "cloud", "region", "zone", "instance_type", "gpu", "gpu_count", "market",
            "price_per_hour", "on_demand_price_per_hour", "launched_at", "ended_at")
    window = "launched_at IS NOT NULL AND launched_at < ? AND (ended_at IS NULL OR ended_at > ?)"
    insts = {}
    for row in r.rows(f"SELECT id, service, cloud, region, zone, instance_type, gpu, gpu_count, market, "
                      f"price_per_hour, {od_col}, launched_at, ended_at FROM instances WHERE {window}",
                      bind_ts(r, until), bind_ts(r, lo)):
        d = dict(zip(cols, row))
        d["launched_at"], d["ended_at"] = ts(d["launched_at"]), ts(d["ended_at"])
        d["zone"] = d["zone"] or "-"
        insts[d["id"]] = d

    # Billable intervals: (instance, start, end, state, reason); one per instance unless grouped by
    # what only the events know.
    intervals: list[tuple[dict, datetime, datetime, str, str]] = []
    launch_reason: dict[str, str] = {}
    if any(k in by for k in INTERVAL_KEYS):
        ev = r.rows("SELECT e.instance_id, e.at, e.from_state, e.to_state, e.reason FROM instance_events e "
                    "JOIN instances i ON i.id = e.instance_id WHERE i.launched_at IS NOT NULL AND i.launched_at < ? "
                    "AND (i.ended_at IS NULL OR i.ended_at > ?) "
                    "ORDER BY e.instance_id, e.at, e.id", bind_ts(r, until), bind_ts(r, lo))
        per: dict[str, list] = defaultdict(list)
        for iid, at, frm, to, reason in ev:
            per[iid].append((ts(at), frm, to, reason))
            if frm is None:
                launch_reason[iid] = reason
        for iid, evs in per.items():
            inst = insts[iid]
            end_of_life = inst["ended_at"] or until
            for k, (at, _frm, to, reason) in enumerate(evs):
                if to not in BILLABLE:
                    continue
                nxt = evs[k + 1][0] if k + 1 < len(evs) else end_of_life
                a, b = max(at, inst["launched_at"], lo), min(nxt, end_of_life, until)
                if b > a:
                    intervals.append((inst, a, b, to, reason))
    else:
        for inst in insts.values():
            a, b = max(inst["launched_at"], lo), min(inst["ended_at"] or until, until)
            if b > a:
                intervals.append((inst, a, b, "", ""))

    groups: dict[tuple, dict] = {}
    basis_count: dict[str, int] = defaultdict(int)
    ref_of: dict[str, float | None] = {}
    for inst in insts.values():
        p, basis = prices.reference(inst)
        ref_of[inst["id"]] = p
        basis_count[basis] += 1

    def key_of(inst: dict, state: str, reason: str) -> tuple:
        vals = {"state": state, "reason": reason, "launch_reason": launch_reason.get(inst["id"], "-")}
        return tuple(str(vals[k] if k in vals else (inst[k] if inst[k] is not None else "-")) for k in by)

    def group(key: tuple) -> dict:
        g = groups.get(key)
        if g is None:
            g = groups[key] = {**dict(zip(by, key)), "instances": set(), "instance_hours": 0.0, "gpu_hours": 0.0,
                               "cost_usd": 0.0, "on_demand_cost_usd": 0.0, "no_reference_hours": 0.0,
                               "preemptions": 0, "not_replaced": 0, "capacity_hours_lost": 0.0,
                               "gpu_hours_lost": 0.0}
        return g

    for inst, a, b, state, reason in intervals:
        h = _hours(a, b)
        g = group(key_of(inst, state, reason))
        g["instances"].add(inst["id"])
        g["instance_hours"] += h
        g["gpu_hours"] += h * inst["gpu_count"]
        g["cost_usd"] += h * inst["price_per_hour"]
        ref = ref_of[inst["id"]]
        if ref is None:
            g["no_reference_hours"] += h
            g["on_demand_cost_usd"] += h * inst["price_per_hour"]  # no saving claimed without a reference
        else:
            g["on_demand_cost_usd"] += h * ref

    # Preemptions in the window and the capacity they cost until a replacement served.
    lt = "<=" if closed else "<"
    pre = r.rows(f"SELECT e.instance_id, e.at, e.from_state, i.service, i.cloud, i.region, i.zone, i.instance_type, "
                 "i.gpu, i.gpu_count, i.market, i.price_per_hour, i.launched_at, i.ended_at FROM instance_events e "
                 f"JOIN instances i ON i.id = e.instance_id WHERE e.to_state = 'preempted' AND e.at >= ? AND e.at {lt} ? "
                 "ORDER BY e.at, e.id", bind_ts(r, lo), bind_ts(r, until))
    replacement_window = timedelta(seconds=REPLACEMENT_WINDOW_S)
    candidates: dict[str, list] = defaultdict(list)
    if pre:
        first = ts(pre[0][1])
        for iid, svc, req, ready, ended in r.rows(
                "SELECT id, service, requested_at, ready_at, ended_at FROM instances WHERE requested_at >= ? "
                "AND requested_at < ? ORDER BY requested_at, id",
                bind_ts(r, first), bind_ts(r, until + replacement_window)):
            candidates[svc].append((ts(req), iid, ts(ready), ts(ended)))
    used: set[str] = set()
    for (iid, at, frm, svc, cloud, region, zone, itype, gpu, n, market, price, launched, ended) in pre:
        at = ts(at)
        inst = insts.get(iid) or {"id": iid, "service": svc, "cloud": cloud, "region": region, "zone": zone or "-",
                                  "instance_type": itype, "gpu": gpu, "gpu_count": n, "market": market,
                                  "price_per_hour": price}
        g = group(key_of(inst, "preempted", "preempted"))
        g["preemptions"] += 1
        cands = candidates.get(svc, [])
        k = bisect.bisect_left(cands, (at, ""))
        match = None
        while k < len(cands) and cands[k][0] <= at + replacement_window:
            if cands[k][1] not in used and cands[k][1] != iid:
                match = cands[k]
                break
            k += 1
        if match is None:
            g["not_replaced"] += 1
            continue
        used.add(match[1])
        back = match[2] or match[3] or until  # serving again; a replacement that failed: until it failed
        h = _hours(at, min(back, until))
        g["capacity_hours_lost"] += h
        g["gpu_hours_lost"] += h * n

    out_groups = []
    for g in groups.values():
        g = dict(g)
        g["instances"] = len(g["instances"])
        g["savings_usd"] = g["on_demand_cost_usd"] - g["cost_usd"]
        for k in ("instance_hours", "gpu_hours", "cost_usd", "on_demand_cost_usd", "savings_usd", "no_reference_hours",
                  "capacity_hours_lost", "gpu_hours_lost"):
            g[k] = round(g[k], 4)
        out_groups.append(g)
    out_groups.sort(key=lambda g: (-g["cost_usd"], -g["preemptions"], [str(g[k]) for k in by]))
    cost = sum(g["cost_usd"] for g in out_groups)
    od = sum(g["on_demand_cost_usd"] for g in out_groups)
    reasons = {reason: n for reason, n in r.rows(
        f"SELECT reason, count(*) FROM instance_events WHERE at >= ? AND at {lt} ? GROUP BY reason",
        bind_ts(r, lo), bind_ts(r, until))}
    outcomes = {o: n for o, n in r.rows(f"SELECT outcome, count(*) FROM decisions WHERE at >= ? AND at {lt} ? "
                                        "GROUP BY outcome", bind_ts(r, lo), bind_ts(r, until))}
    pz: dict[str, int] = defaultdict(int)
    for row in pre:
        pz["/".join([row[4], row[5], row[6] or "-"])] += 1
    totals = {
        "instances": len({inst["id"] for inst, *_ in intervals}),
        "instance_hours": round(sum(g["instance_hours"] for g in out_groups), 4),
        "gpu_hours": round(sum(g["gpu_hours"] for g in out_groups), 4),
        "cost_usd": round(cost, 4), "on_demand_cost_usd": round(od, 4), "savings_usd": round(od - cost, 4),
        "savings_pct": round(100.0 * (od - cost) / od, 2) if od > 0 else 0.0,
        "preemptions": len(pre), "not_replaced": sum(g["not_replaced"] for g in out_groups),
        "capacity_hours_lost": round(sum(g["capacity_hours_lost"] for g in out_groups), 4),
        "gpu_hours_lost": round(sum(g["gpu_hours_lost"] for g in out_groups), 4),
        "decisions": sum(outcomes.values()),
    }
    return {
        "since": since.isoformat() if since else None, "until": until.isoformat(), "group_by": list(by),
        "total_cost_usd": totals["cost_usd"], "totals": totals, "groups": out_groups,
        "reference_prices": dict(sorted(basis_count.items())), "replacement_window_s": REPLACEMENT_WINDOW_S,
        "events_by_reason": dict(sorted(reasons.items())), "decisions_by_outcome": dict(sorted(outcomes.items())),
        "preemptions_by_zone": [{"zone": z, "count": n} for z, n in sorted(pz.items(), key=lambda x: -x[1])],
    }


METRIC_COLUMNS = ("instances", "instance_hours", "gpu_hours", "cost_usd", "on_demand_cost_usd", "savings_usd",
                  "preemptions", "not_replaced", "capacity_hours_lost", "gpu_hours_lost")
