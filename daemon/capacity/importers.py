"""Import capacity measurements made elsewhere into our profile format.

Formats:
- Mélange solver input (`gpu_info: {name: {cost, tputs}}`), tputs[i][j] = req/s for
  input bucket i, output bucket j. Mélange states no bucket edges and no SLO, so the
  caller supplies both.
- AIBrix GPU-optimizer profile (`gpu, cost, tputs, indexes, slos`): tputs is
  [output][input] (the transpose of Mélange), `indexes` = [output axis, input axis]
  of the token counts measured at. A 0.0 cell means no rate met the SLO.
- AIBrix raw benchmark rows (`*.jsonl`: input_tokens, output_tokens, request_rate,
  metric in TPUT/TT/E2E/TTFT/TPOT, mean/P50/P90/P99, seconds): a full rate sweep, so
  it becomes latency curves that answer for any SLO.
- vLLM `benchmark_serving.py` / `vllm bench serve --save-result` JSON, one file per
  offered rate: request_rate, completed, total_input_tokens, total_output_tokens,
  request_throughput, {mean,median,std,p99}_{ttft,tpot,itl,e2el}_ms.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from daemon.capacity.profile import Cell, CurvePoint, Profile, ProfileError, Provenance, Slo, now_utc


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None


def _num(path: Path, where: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ProfileError(f"{path}: {where}: expected a non-negative number, got {v!r}")
    return float(v)


def _matrix(path: Path, where: str, m, rows: int, cols: int) -> list[list[float]]:
    if not isinstance(m, list) or len(m) != rows or any(not isinstance(r, list) or len(r) != cols for r in m):
        raise ProfileError(f"{path}: {where}: expected a {rows} x {cols} matrix")
    return [[_num(path, f"{where}[{i}][{j}]", v) for j, v in enumerate(r)] for i, r in enumerate(m)]


def _edges_ranges(edges: list[int]) -> list[tuple[int, int]]:
    return [(edges[k], edges[k + 1]) for k in range(len(edges) - 1)]


# ---- Mélange -----------------------------------------------------------------------------


def import_melange(path: str | Path, *, model: str, input_edges: list[int], output_edges: list[int],
                   slo: Slo, tp: int = 1, dtype: str = "bf16") -> list[Profile]:
    """One profile per GPU of a Mélange config; bucket edges and SLO come from the caller."""
    p = Path(path)
    data = _read_json(p)
    info = data.get("gpu_info") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not info:
        raise ProfileError(f"{p}: gpu_info: expected an object of GPU name -> {{cost, tputs}}")
    ins, outs = _edges_ranges(input_edges), _edges_ranges(output_edges)
    profiles = []
    for gpu, entry in info.items():
        if not isinstance(entry, dict) or "tputs" not in entry:
            raise ProfileError(f"{p}: gpu_info.{gpu}.tputs: missing")
        m = _matrix(p, f"gpu_info.{gpu}.tputs", entry["tputs"], len(ins), len(outs))
        cells = [Cell(input_tokens=ins[i], output_tokens=outs[j], max_rps=m[i][j])
                 for i in range(len(ins)) for j in range(len(outs))]
        profiles.append(Profile(
            model=model, gpu=gpu, tp=tp, dtype=dtype, slo=slo, cells=cells,
            provenance=Provenance(kind="imported", source=f"melange:{p.name}", created=now_utc(), tool="melange",
                                  notes=f"cost {entry.get('cost')}/h in file; bucket edges and SLO given at import")))
    return profiles


# ---- AIBrix ------------------------------------------------------------------------------


def import_aibrix_profile(path: str | Path, *, model: str, gpu: str, tp: int = 1, dtype: str = "bf16",
                          assume_slo: Slo | None = None) -> Profile:
    """An AIBrix gen_profile.py output; note the [output][input] orientation."""
    p = Path(path)
    d = _read_json(p)
    if not isinstance(d, dict):
        raise ProfileError(f"{p}: expected a JSON object")
    idx = d.get("indexes")
    if not (isinstance(idx, list) and len(idx) == 2 and all(isinstance(a, list) and a for a in idx)):
        raise ProfileError(f"{p}: indexes: expected [output_tokens axis, input_tokens axis]")
    out_axis = [int(_num(p, f"indexes[0][{k}]", v)) for k, v in enumerate(idx[0])]
    in_axis = [int(_num(p, f"indexes[1][{k}]", v)) for k, v in enumerate(idx[1])]
    m = _matrix(p, "tputs", d.get("tputs"), len(out_axis), len(in_axis))  # [output][input]
    slos = d.get("slos") or {}
    if assume_slo is not None:
        slo, note = assume_slo, f"SLO asserted at import (file states {slos or 'none'})"
    else:
        slo = Slo(e2e_p99_s=slos.get("e2e"), ttft_p99_s=slos.get("ttft"),
                  tpot_p99_ms=slos["tpot"] * 1e3 if slos.get("tpot") else None)
        note = f"file SLO {slos or 'not recorded'}"
    cells = [Cell(input_tokens=(i_tok, i_tok), output_tokens=(o_tok, o_tok), max_rps=m[j][i])
             for i, i_tok in enumerate(in_axis) for j, o_tok in enumerate(out_axis)]
    created = d.get("created")
    when = datetime.fromtimestamp(created, timezone.utc).replace(microsecond=0) if isinstance(created, (int, float)) else now_utc()
    return Profile(model=model, gpu=gpu, tp=tp, dtype=dtype, slo=slo, cells=cells,
                   provenance=Provenance(kind="imported", source=f"aibrix:{p.name} ({d.get('gpu')})", created=when,
                                         tool="aibrix-gpu-optimizer", notes=note))


def import_aibrix_jsonl(path: str | Path, *, model: str, gpu: str, slo: Slo, tp: int = 1,
                        dtype: str = "bf16") -> Profile:
    """AIBrix raw benchmark rows -> one cell per (input, output) with its latency curve."""
    p = Path(path)
    points: dict[tuple[int, int], dict[float, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ProfileError(f"{p}: cannot read: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (int(row["input_tokens"]), int(row["output_tokens"]))
            rate = float(row["request_rate"])
            metric = str(row["metric"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{p}:{n}: bad row ({type(e).__name__}: {e})") from None
        points[key][rate][metric] = row
    if not points:
        raise ProfileError(f"{p}: no benchmark rows")
    cells = []
    for (i_tok, o_tok), by_rate in sorted(points.items()):
        curve = []
        for rate, m in sorted(by_rate.items()):
            try:
                curve.append(CurvePoint(
                    rate_rps=rate, achieved_rps=m["TPUT"]["mean"],
                    ttft_p99_s=m["TTFT"]["P99"], ttft_mean_s=m["TTFT"]["mean"],
                    tpot_p99_ms=m["TPOT"]["P99"] * 1e3, tpot_mean_ms=m["TPOT"]["mean"] * 1e3,
                    e2e_p99_s=m.get("E2E", {}).get("P99"), requests=m["TPUT"].get("samples")))
            except KeyError as e:
                raise ProfileError(f"{p}: input {i_tok} output {o_tok} rate {rate}: metric row {e} missing") from None
        cell = Cell(input_tokens=(i_tok, i_tok), output_tokens=(o_tok, o_tok), max_rps=0.0, curve=curve)
        best = cell.max_rps_at(slo.ttft_p99_s or math.inf, slo.tpot_p99_ms or math.inf) or 0.0
        cells.append(cell.model_copy(update={"max_rps": best}))
    return Profile(model=model, gpu=gpu, tp=tp, dtype=dtype, slo=slo, cells=cells,
                   provenance=Provenance(kind="imported", source=f"aibrix-bench:{p.name}", created=now_utc(),
                                         tool="aibrix-gpu-optimizer benchmark", notes="curves from raw rows"))


# ---- vLLM benchmark_serving / vllm bench serve ------------------------------------------

_VLLM_REQUIRED = ("request_rate", "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
                  "p99_ttft_ms", "p99_tpot_ms")


def read_vllm_result(path: str | Path) -> dict:
    """One `--save-result` file, validated; returns the fields we use."""
    p = Path(path)
    d = _read_json(p)
    if not isinstance(d, dict):
        raise ProfileError(f"{p}: expected a JSON object (a vLLM --save-result file)")
    for k in _VLLM_REQUIRED:
        if k not in d:
            hint = " (run the benchmark with --percentile-metrics ttft,tpot --metric-percentiles 99)" if k.startswith("p99") else ""
            raise ProfileError(f"{p}: {k}: missing{hint}")
    rate = d["request_rate"]
    if rate == "inf" or (isinstance(rate, float) and math.isinf(rate)):
        raise ProfileError(f"{p}: request_rate: 'inf' is a closed-loop burst, not a rate; sweep finite rates")
    completed = _num(p, "completed", d["completed"])
    if completed <= 0:
        raise ProfileError(f"{p}: completed: no request completed")
    failed = d.get("failed")
    if failed is None and isinstance(d.get("num_prompts"), (int, float)):
        failed = max(0, d["num_prompts"] - completed)
    return {
        "path": p,
        "model_id": d.get("model_id"),
        "rate": _num(p, "request_rate", rate),
        "achieved": _num(p, "request_throughput", d["request_throughput"]),
        "input_tokens": _num(p, "total_input_tokens", d["total_input_tokens"]) / completed,
        "output_tokens": _num(p, "total_output_tokens", d["total_output_tokens"]) / completed,
        "ttft_p99_s": _num(p, "p99_ttft_ms", d["p99_ttft_ms"]) / 1e3,
        "tpot_p99_ms": _num(p, "p99_tpot_ms", d["p99_tpot_ms"]),
        "ttft_mean_s": _num(p, "mean_ttft_ms", d["mean_ttft_ms"]) / 1e3 if "mean_ttft_ms" in d else None,
        "tpot_mean_ms": _num(p, "mean_tpot_ms", d["mean_tpot_ms"]) if "mean_tpot_ms" in d else None,
        "e2e_p99_s": _num(p, "p99_e2el_ms", d["p99_e2el_ms"]) / 1e3 if "p99_e2el_ms" in d else None,
        "requests": int(completed),
        "errors": int(failed or 0),
        "date": d.get("date"),
    }


def _bucket_key(tokens: float) -> int:
    """Group runs of one shape: token means within 10% of a power-of-2 grid point collapse."""
    return int(round(tokens))


def import_vllm_bench(paths: list[str | Path], *, gpu: str, slo: Slo, model: str | None = None, tp: int = 1,
                      dtype: str = "bf16", rel_tol: float = 0.1) -> Profile:
    """A rate sweep (one file per rate, possibly several request shapes) -> curves per shape."""
    runs = [read_vllm_result(x) for x in paths]
    if not runs:
        raise ProfileError("no vLLM result files given")
    models = {r["model_id"] for r in runs if r["model_id"]}
    if model is None:
        if len(models) != 1:
            raise ProfileError(f"model_id differs or is missing across files ({sorted(models)}); pass --model")
        model = models.pop()
    # Group runs whose mean input/output lengths agree within rel_tol (random datasets vary a little).
    groups: list[list[dict]] = []
    for r in sorted(runs, key=lambda r: (r["input_tokens"], r["output_tokens"], r["rate"])):
        for g in groups:
            ref = g[0]
            if (abs(r["input_tokens"] - ref["input_tokens"]) <= rel_tol * max(ref["input_tokens"], 1)
                    and abs(r["output_tokens"] - ref["output_tokens"]) <= rel_tol * max(ref["output_tokens"], 1)):
                g.append(r)
                break
        else:
            groups.append([r])
    cells = []
    for g in groups:
        i_tok = _bucket_key(sum(r["input_tokens"] for r in g) / len(g))
        o_tok = _bucket_key(sum(r["output_tokens"] for r in g) / len(g))
        curve = [CurvePoint(rate_rps=r["rate"], achieved_rps=r["achieved"], ttft_p99_s=r["ttft_p99_s"],
                            tpot_p99_ms=r["tpot_p99_ms"], ttft_mean_s=r["ttft_mean_s"], tpot_mean_ms=r["tpot_mean_ms"],
                            e2e_p99_s=r["e2e_p99_s"], requests=r["requests"], errors=r["errors"])
                 for r in sorted(g, key=lambda r: r["rate"])]
        cell = Cell(input_tokens=(i_tok, i_tok), output_tokens=(o_tok, o_tok), max_rps=0.0, curve=curve)
        best = cell.max_rps_at(slo.ttft_p99_s or math.inf, slo.tpot_p99_ms or math.inf) or 0.0
        cells.append(cell.model_copy(update={"max_rps": best}))
    files = ", ".join(sorted(r["path"].name for r in runs))
    return Profile(model=model, gpu=gpu, tp=tp, dtype=dtype, slo=slo, cells=cells,
                   provenance=Provenance(kind="imported", source=f"vllm-bench:{len(runs)} files", created=now_utc(),
                                         tool="vllm benchmark_serving", notes=files[:500]))
