"""`fleetctl profile ...`: see, estimate, measure and import capacity profiles.

Heavy work is imported inside the commands so `fleetctl` starts fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Capacity profiles: MaxTput per GPU type, model, size bucket and SLO.", no_args_is_help=True)


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _profiles_dir(profiles_dir: Optional[Path], config: Optional[Path]) -> Path:
    if profiles_dir is not None:
        return profiles_dir
    from daemon.config import ConfigError, load_config

    try:
        return Path(load_config(config).profiles.profiles_dir)
    except ConfigError as e:
        _fail(str(e))


def _edges(text: Optional[str], name: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{name}: expected comma-separated integers, got {text!r}")
    if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        _fail(f"{name}: must start at 0 and increase strictly, got {edges}")
    return edges


def _grid(input_edges: Optional[str], output_edges: Optional[str]):
    from daemon.capacity.estimator import default_grid
    from daemon.domain import BucketGrid

    g = default_grid()
    ie = _edges(input_edges, "--input-edges") or list(g.input_edges)
    oe = _edges(output_edges, "--output-edges") or list(g.output_edges)
    return BucketGrid(tuple(ie), tuple(oe))


def _matrix_table(title: str, cells) -> "object":
    from rich.table import Table

    ins = sorted({c.input_tokens for c in cells})
    outs = sorted({c.output_tokens for c in cells})
    by = {(c.input_tokens, c.output_tokens): c.max_rps for c in cells}
    t = Table(title=title)
    t.add_column("input \\ output")
    for o in outs:
        t.add_column(f"{o[0]}-{o[1]}" if o[0] != o[1] else str(o[0]), justify="right")
    for i in ins:
        row = [f"{i[0]}-{i[1]}" if i[0] != i[1] else str(i[0])]
        for o in outs:
            v = by.get((i, o))
            row.append("-" if v is None else f"{v:.3g}")
        t.add_row(*row)
    return t


def _console():
    import shutil

    from rich.console import Console

    return Console(width=max(shutil.get_terminal_size((160, 24)).columns, 140))


# ---- estimate ----------------------------------------------------------------------------


@app.command()
def estimate(
    model: str = typer.Option(..., "--model", help="Model name or HF id, e.g. meta-llama/Llama-2-7b-hf"),
    gpu: str = typer.Option(..., "--gpu", help="GPU type, e.g. A10G, H100, H20, Ascend-910B"),
    tp: Optional[int] = typer.Option(None, "--tp", min=1, help="GPUs per replica (default: fewest that fit)"),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp8 | int8"),
    slo_ttft_s: float = typer.Option(2.0, "--slo-ttft-s", min=0.001),
    slo_tpot_ms: float = typer.Option(120.0, "--slo-tpot-ms", min=0.001),
    engine: str = typer.Option("vllm-v1", "--engine", help="vllm-v1 | vllm-v0 (host overhead of 2024-era vLLM)"),
    input_edges: Optional[str] = typer.Option(None, "--input-edges", help="e.g. 0,256,1024,4096,16384"),
    output_edges: Optional[str] = typer.Option(None, "--output-edges", help="e.g. 0,64,256,1024,4096"),
    as_json: bool = typer.Option(False, "--json", help="Print the machine-readable result"),
    save: bool = typer.Option(False, "--save", help="Also store the estimate as a profile"),
    profiles_dir: Optional[Path] = typer.Option(None, "--profiles-dir"),
    config: Optional[Path] = typer.Option(None, "--config"),
) -> None:
    """Estimate MaxTput per size bucket from the analytical model (flagged as estimated)."""
    from daemon.capacity.estimator import EstimateError, estimate_profile

    if dtype not in ("bf16", "fp16", "fp8", "int8"):
        _fail(f"--dtype must be one of bf16, fp16, fp8, int8, got {dtype!r}")
    grid = _grid(input_edges, output_edges)
    try:
        prof = estimate_profile(model, gpu, tp, dtype, ttft_s=slo_ttft_s, tpot_ms=slo_tpot_ms, grid=grid,
                                engine=engine, curves=save)
    except EstimateError as e:
        _fail(str(e))
    if save:
        from daemon.capacity.profile import save_profile

        path = save_profile(prof, _profiles_dir(profiles_dir, config))
        typer.echo(f"saved {path}", err=True)
    if as_json:
        out = {
            "model": model,
            "gpu": gpu,
            "tp": prof.tp,
            "slo": {"ttft_p99_s": slo_ttft_s, "tpot_p99_ms": slo_tpot_ms},
            "buckets": [{"input_tokens": list(c.input_tokens), "output_tokens": list(c.output_tokens),
                         "max_rps": c.max_rps} for c in prof.cells],
        }
        typer.echo(json.dumps(out))
        return
    con = _console()
    con.print(_matrix_table(f"{model} on {prof.gpu} x{prof.tp} ({dtype}, {prof.engine}): max req/s per replica, "
                            f"{prof.slo.label()}", prof.cells))
    con.print(f"estimated: {prof.provenance.source}; {prof.provenance.notes}")


# ---- measure -----------------------------------------------------------------------------


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            a, b = part.lower().split("x")
            out.append((int(a), int(b)))
        except ValueError:
            _fail(f"--shapes: expected INPUTxOUTPUT[,...] like 128x32,512x128, got {part!r}")
        if out[-1][0] < 1 or out[-1][1] < 1:
            _fail(f"--shapes: token counts must be >= 1, got {part!r}")
    if not out:
        _fail("--shapes: at least one INPUTxOUTPUT is required")
    return tuple(out)


@app.command()
def measure(
    endpoint: str = typer.Option(..., "--endpoint", help="Base URL of an OpenAI-compatible server"),
    model: str = typer.Option(..., "--model", help="Model name recorded in the profile (HF id)"),
    gpu: str = typer.Option(..., "--gpu", help="GPU type the server runs on"),
    tp: int = typer.Option(1, "--tp", min=1, help="GPUs behind the endpoint (one replica)"),
    dtype: str = typer.Option("bf16", "--dtype"),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="Name to send (default: --model)"),
    shapes: str = typer.Option("128x32,512x128,2048x256", "--shapes", help="INPUTxOUTPUT token shapes to sweep"),
    start_rate: float = typer.Option(0.5, "--start-rate", min=0.001),
    rate_factor: float = typer.Option(2.0, "--rate-factor", min=1.05),
    max_rate: float = typer.Option(256.0, "--max-rate", min=0.001),
    refine_steps: int = typer.Option(2, "--refine-steps", min=0),
    duration_s: float = typer.Option(30.0, "--duration-s", min=0.1, help="Seconds of arrivals per rate"),
    min_requests: int = typer.Option(20, "--min-requests", min=1),
    slo_ttft_s: float = typer.Option(2.0, "--slo-ttft-s", min=0.001),
    slo_tpot_ms: float = typer.Option(120.0, "--slo-tpot-ms", min=0.001),
    api: str = typer.Option("completions", "--api", help="completions | chat"),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="vLLM: force max_tokens outputs"),
    timeout_s: float = typer.Option(120.0, "--timeout-s", min=0.1),
    seed: int = typer.Option(0, "--seed"),
    profiles_dir: Optional[Path] = typer.Option(None, "--profiles-dir"),
    config: Optional[Path] = typer.Option(None, "--config"),
) -> None:
    """Sweep shapes and Poisson rates against a live server until the SLO breaks; write a profile."""
    import asyncio

    from daemon.capacity.measure import MeasureSpec, profile_from_points, sweep
    from daemon.capacity.profile import Slo, save_profile

    if api not in ("completions", "chat"):
        _fail(f"--api must be completions or chat, got {api!r}")
    spec = MeasureSpec(endpoint=endpoint, model=served_model or model, shapes=_shapes(shapes), start_rate=start_rate,
                       rate_factor=rate_factor, max_rate=max_rate, refine_steps=refine_steps, duration_s=duration_s,
                       min_requests=min_requests, slo=Slo(ttft_p99_s=slo_ttft_s, tpot_p99_ms=slo_tpot_ms), api=api,
                       ignore_eos=ignore_eos, request_timeout_s=timeout_s, seed=seed)
    out_dir = _profiles_dir(profiles_dir, config)
    con = _console()

    def progress(ev: dict) -> None:
        s = ev["shape"]
        if ev["event"] == "rate.start":
            con.print(f"[dim]{s[0]}x{s[1]}: {ev['rate']:.3g} req/s ...[/dim]")
        elif ev["event"] == "rate.done":
            p = ev["point"]
            ttft = "-" if p.ttft_p99_s is None else f"{p.ttft_p99_s:.3f}s"
            tpot = "-" if p.tpot_p99_ms is None else f"{p.tpot_p99_ms:.1f}ms"
            mark = "[green]ok[/green]" if ev["ok"] else "[red]SLO broken[/red]"
            con.print(f"  {s[0]}x{s[1]} @ {ev['rate']:.3g}: achieved {p.achieved_rps:.3g} req/s, "
                      f"p99 TTFT {ttft}, p99 TPOT {tpot}, errors {p.errors}/{p.requests} {mark}")
        elif ev["event"] == "shape.done":
            con.print(f"[bold]{s[0]}x{s[1]}: max {ev['max_rps']:.3g} req/s within SLO[/bold]")

    points = asyncio.run(sweep(spec, progress))
    if all(rp.point.errors == rp.point.requests for rp in points):
        _fail(f"every request to {endpoint} failed (first error: {points[0].results[0].error if points and points[0].results else '?'})", 1)
    prof = profile_from_points(points, spec=spec, model=model, gpu=gpu, tp=tp, dtype=dtype)
    path = save_profile(prof, out_dir)
    con.print(_matrix_table(f"measured {model} on {gpu} x{tp}: max req/s, {spec.slo.label()}", prof.cells))
    typer.echo(f"wrote {path}")


# ---- import ------------------------------------------------------------------------------


def _detect(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "aibrix-bench"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        _fail(f"{path}: cannot read as JSON: {e}")
    if isinstance(d, dict):
        if "gpu_info" in d:
            return "melange"
        if "indexes" in d and "tputs" in d:
            return "aibrix"
        if "request_rate" in d and ("p99_ttft_ms" in d or "mean_ttft_ms" in d):
            return "vllm"
    _fail(f"{path}: not a Mélange config, AIBrix profile/benchmark or vLLM result; pass --format")
    return ""


@app.command("import")
def import_cmd(
    files: list[Path] = typer.Argument(..., help="Files to import (a vLLM sweep is one file per rate)"),
    fmt: str = typer.Option("auto", "--format", help="auto | melange | aibrix | aibrix-bench | vllm"),
    model: Optional[str] = typer.Option(None, "--model", help="Model (required unless the file names it)"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU type (required except for Mélange)"),
    tp: int = typer.Option(1, "--tp", min=1),
    dtype: str = typer.Option("bf16", "--dtype"),
    slo_ttft_s: float = typer.Option(2.0, "--slo-ttft-s", min=0.001, help="SLO the stored max_rps is read at"),
    slo_tpot_ms: float = typer.Option(120.0, "--slo-tpot-ms", min=0.001),
    assume_slo: bool = typer.Option(False, "--assume-slo", help="AIBrix: assert the table meets --slo-* (file has E2E only)"),
    input_edges: Optional[str] = typer.Option(None, "--input-edges", help="Mélange: input bucket edges"),
    output_edges: Optional[str] = typer.Option(None, "--output-edges", help="Mélange: output bucket edges"),
    profiles_dir: Optional[Path] = typer.Option(None, "--profiles-dir"),
    config: Optional[Path] = typer.Option(None, "--config"),
) -> None:
    """Import Mélange/AIBrix tputs or vLLM benchmark results as profiles."""
    from daemon.capacity import importers
    from daemon.capacity.profile import ProfileError, Slo, save_profile

    for f in files:
        if not f.is_file():
            _fail(f"{f}: no such file")
    kinds = {_detect(f) for f in files} if fmt == "auto" else {fmt}
    if len(kinds) != 1:
        _fail(f"files are of different formats ({', '.join(sorted(kinds))}); import them separately")
    kind = kinds.pop()
    slo = Slo(ttft_p99_s=slo_ttft_s, tpot_p99_ms=slo_tpot_ms)
    try:
        if kind == "melange":
            ie, oe = _edges(input_edges, "--input-edges"), _edges(output_edges, "--output-edges")
            if ie is None or oe is None or model is None:
                _fail("Mélange configs state no bucket edges or model: pass --model, --input-edges and --output-edges")
            profiles = [p for f in files for p in importers.import_melange(
                f, model=model, input_edges=ie, output_edges=oe, slo=slo, tp=tp, dtype=dtype)]
        elif kind in ("aibrix", "aibrix-bench"):
            if model is None or gpu is None:
                _fail("AIBrix files name a deployment, not a model and GPU: pass --model and --gpu")
            if kind == "aibrix":
                profiles = [importers.import_aibrix_profile(f, model=model, gpu=gpu, tp=tp, dtype=dtype,
                                                            assume_slo=slo if assume_slo else None) for f in files]
            else:
                profiles = [importers.import_aibrix_jsonl(f, model=model, gpu=gpu, slo=slo, tp=tp, dtype=dtype)
                            for f in files]
        elif kind == "vllm":
            if gpu is None:
                _fail("vLLM results do not record the GPU: pass --gpu")
            profiles = [importers.import_vllm_bench(files, model=model, gpu=gpu, slo=slo, tp=tp, dtype=dtype)]
        else:
            _fail(f"--format must be auto, melange, aibrix, aibrix-bench or vllm, got {kind!r}")
    except ProfileError as e:
        _fail(str(e))
    out_dir = _profiles_dir(profiles_dir, config)
    for p in profiles:
        path = save_profile(p, out_dir)
        covered = sum(1 for c in p.cells if c.max_rps > 0)
        typer.echo(f"wrote {path} ({p.model} on {p.pool}, {len(p.cells)} cells, {covered} servable at {p.slo.label()})")


# ---- list / show -------------------------------------------------------------------------


@app.command("list")
def list_cmd(
    profiles_dir: Optional[Path] = typer.Option(None, "--profiles-dir"),
    config: Optional[Path] = typer.Option(None, "--config"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stored profiles with provenance."""
    from rich.table import Table

    from daemon.capacity.profile import load_profiles

    d = _profiles_dir(profiles_dir, config)
    found, errors = load_profiles(d)
    for e in errors:
        typer.echo(f"warning: {e}", err=True)
    rows = [{"file": path.name, "model": p.model, "pool": p.pool, "dtype": p.dtype, "kind": p.provenance.kind,
             "source": p.provenance.source, "created": p.provenance.created.isoformat(), "slo": p.slo.label(),
             "cells": len(p.cells), "curves": p.has_curves()} for path, p in found]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo(f"no profiles in {d}")
        return
    t = Table(title=f"capacity profiles in {d}")
    for col in ("file", "model", "pool", "dtype", "kind", "source", "created", "slo", "cells", "curves"):
        t.add_column(col)
    for r in rows:
        t.add_row(*[str(r[c]) for c in ("file", "model", "pool", "dtype", "kind", "source", "created", "slo",
                                        "cells", "curves")])
    _console().print(t)


@app.command()
def show(
    name: str = typer.Argument(..., help="Profile file name (or a unique prefix of it)"),
    slo_ttft_s: Optional[float] = typer.Option(None, "--slo-ttft-s", help="Re-read the curves at this SLO"),
    slo_tpot_ms: Optional[float] = typer.Option(None, "--slo-tpot-ms"),
    profiles_dir: Optional[Path] = typer.Option(None, "--profiles-dir"),
    config: Optional[Path] = typer.Option(None, "--config"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One profile: provenance, MaxTput per cell and the latency curve behind it."""
    from daemon.capacity.profile import ProfileError, load_profile

    d = _profiles_dir(profiles_dir, config)
    path = Path(name) if Path(name).is_file() else None
    if path is None:
        matches = sorted(p for p in d.glob("*.json") if p.name.startswith(name)) if d.is_dir() else []
        if len(matches) != 1:
            _fail(f"{len(matches)} profiles in {d} match {name!r}" + (
                f": {', '.join(m.name for m in matches)}" if matches else ""))
        path = matches[0]
    try:
        prof = load_profile(path)
    except ProfileError as e:
        _fail(str(e))
    if slo_ttft_s is not None or slo_tpot_ms is not None:
        re_read = prof.at_slo(slo_ttft_s or prof.slo.ttft_p99_s or math.inf, slo_tpot_ms or prof.slo.tpot_p99_ms or math.inf)
        if re_read is None:
            _fail(f"{path.name} has no latency curves and its SLO ({prof.slo.label()}) is looser")
        prof = re_read
    if as_json:
        typer.echo(prof.model_dump_json(indent=2, exclude_none=True))
        return
    con = _console()
    pv = prof.provenance
    con.print(f"[bold]{path.name}[/bold]: {prof.model} on {prof.pool} ({prof.dtype}"
              f"{', ' + prof.engine if prof.engine else ''})")
    con.print(f"{pv.kind} from {pv.source}, {pv.created.isoformat()}" + (f" [{pv.tool}]" if pv.tool else ""))
    if pv.notes:
        con.print(f"notes: {pv.notes}")
    con.print(_matrix_table(f"max req/s per replica at {prof.slo.label()}", prof.cells))
    from rich.table import Table

    curves = [c for c in prof.cells if c.curve]
    if curves:
        t = Table(title="latency curves (offered rate -> p99)")
        for col in ("input", "output", "rate", "achieved", "TTFT p99 s", "TPOT p99 ms", "errors"):
            t.add_column(col, justify="right")
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        for c in curves:
            for p in c.curve:
                t.add_row(f"{c.input_tokens[0]}-{c.input_tokens[1]}", f"{c.output_tokens[0]}-{c.output_tokens[1]}",
                          fmt(p.rate_rps, ".3g"), fmt(p.achieved_rps, ".3g"), fmt(p.ttft_p99_s, ".3f"),
                          fmt(p.tpot_p99_ms, ".1f"), fmt(p.errors, "d"))
        con.print(t)
