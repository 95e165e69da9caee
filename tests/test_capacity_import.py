"""Importers: vLLM rate sweeps (fixture in vLLM's --save-result format), AIBrix and Mélange files."""

import json
from pathlib import Path

import pytest

from daemon.capacity.importers import (import_aibrix_jsonl, import_aibrix_profile, import_melange,
                                       import_vllm_bench, read_vllm_result)
from daemon.capacity.profile import ProfileError, Slo

FIX = Path(__file__).resolve().parent / "fixtures" / "vllm_bench"
MELANGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "melange"
AIBRIX = MELANGE / "aibrix-gpu-optimizer" / "profiles"
SLO = Slo(ttft_p99_s=2.0, tpot_p99_ms=120.0)

needs_melange = pytest.mark.skipif(not MELANGE.is_dir(), reason=f"Mélange data not found at {MELANGE}")


def test_vllm_sweep_becomes_two_curves_and_stops_at_the_first_break():
    p = import_vllm_bench(sorted(FIX.glob("*.json")), gpu="A100-80GB", slo=SLO)
    assert p.model == "meta-llama/Llama-2-7b-hf" and p.provenance.kind == "imported"
    cells = {(c.input_tokens[0], c.output_tokens[0]): c for c in p.cells}
    assert set(cells) == {(512, 128), (2048, 256)}
    a, b = cells[(512, 128)], cells[(2048, 256)]
    assert [pt.rate_rps for pt in a.curve] == [1, 2, 4, 8, 16, 32]
    assert a.max_rps == pytest.approx(7.584)  # 16 req/s: p99 TTFT 6.1 s breaks the 2 s SLO
    assert b.max_rps == pytest.approx(1.919)  # 4 req/s: only 2.3 req/s completed (< 90%): saturated
    assert a.curve[0].ttft_p99_s == pytest.approx(0.0714) and a.curve[0].tpot_p99_ms == pytest.approx(15.2)
    # the curve answers other SLOs
    tight = {(c.input_tokens[0], c.output_tokens[0]): c.max_rps for c in p.at_slo(2.0, 20.0).cells}
    assert tight == {(512, 128): pytest.approx(1.978), (2048, 256): pytest.approx(0.497)}


def test_vllm_result_errors_name_the_file_and_field(tmp_path):
    src = json.loads((FIX / "openai-1.0qps-Llama-2-7b-hf-in512-out128.json").read_text())
    no_p99 = dict(src)
    del no_p99["p99_tpot_ms"]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(no_p99))
    with pytest.raises(ProfileError, match=r"r.json: p99_tpot_ms: missing \(run the benchmark with --percentile"):
        read_vllm_result(f)
    f.write_text(json.dumps(dict(src, request_rate="inf")))
    with pytest.raises(ProfileError, match="closed-loop"):
        read_vllm_result(f)
    f.write_text(json.dumps(dict(src, p99_ttft_ms="fast")))
    with pytest.raises(ProfileError, match="p99_ttft_ms: expected a non-negative number"):
        read_vllm_result(f)


def test_vllm_files_of_different_models_need_an_explicit_model(tmp_path):
    for k, f in enumerate(sorted(FIX.glob("*in512*.json"))[:2]):
        d = json.loads(f.read_text())
        d["model_id"] = f"m{k}"
        (tmp_path / f.name).write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="pass --model"):
        import_vllm_bench(sorted(tmp_path.glob("*.json")), gpu="L4", slo=SLO)
    assert import_vllm_bench(sorted(tmp_path.glob("*.json")), gpu="L4", slo=SLO, model="x").model == "x"


@needs_melange
def test_aibrix_profile_orientation_is_output_by_input():
    p = import_aibrix_profile(AIBRIX / "simulator-llama2-7b-a100.json", model="llama2-7b", gpu="A100-80GB")
    raw = json.loads((AIBRIX / "simulator-llama2-7b-a100.json").read_text())
    by = {(c.input_tokens[0], c.output_tokens[0]): c.max_rps for c in p.cells}
    outs, ins = raw["indexes"]
    assert by[(ins[0], outs[0])] == raw["tputs"][0][0]
    assert by[(ins[4], outs[0])] == raw["tputs"][0][4]  # input 2048, output 4: row 0 (output), column 4 (input)
    assert by[(ins[0], outs[7])] == raw["tputs"][7][0]  # input 128, output 512
    assert raw["tputs"][0][4] != raw["tputs"][4][0]
    assert by[(2048, 4)] < by[(128, 4)]  # longer prompts, fewer requests per second: orientation sanity
    assert p.slo.e2e_p99_s == 5.0 and p.slo.tpot_p99_ms is None
    assert p.at_slo(2.0, 120.0) is None  # an E2E-only SLO cannot vouch for TTFT/TPOT
    asserted = import_aibrix_profile(AIBRIX / "simulator-llama2-7b-a40.json", model="llama2-7b", gpu="A40",
                                     assume_slo=SLO)
    assert asserted.at_slo(2.0, 120.0) is not None and "asserted" in asserted.provenance.notes


@needs_melange
def test_aibrix_benchmark_rows_become_curves():
    p = import_aibrix_jsonl(AIBRIX / "simulator-llama2-7b-a100.jsonl", model="llama2-7b", gpu="A100-80GB", slo=SLO)
    assert len(p.cells) == 40  # 5 input x 8 output lengths
    c = next(c for c in p.cells if c.input_tokens == (128, 128) and c.output_tokens == (128, 128))
    assert [pt.rate_rps for pt in c.curve] == [1, 2, 4, 8, 16, 32, 64]
    assert c.max_rps == c.max_rps_at(2.0, 120.0)
    # AIBrix's CPU simulator reports TPOT 0 and TTFT of microseconds (DATA-README: not a GPU measurement),
    # so only a TTFT bound of ~100 us bites; saturation (< 90% completed) limits the rest.
    strict = p.at_slo(1e-4, 120.0)
    assert sum(x.max_rps for x in strict.cells) < sum(x.max_rps for x in p.cells)


@needs_melange
def test_melange_config_rows_are_input_columns_output(tmp_path):
    ps = import_melange(MELANGE / "melange-release" / "config" / "example.json", model="Llama-2-7B",
                        input_edges=[0, 512, 4096], output_edges=[0, 128, 1024], slo=SLO)
    by = {p.gpu: {(c.input_tokens, c.output_tokens): c.max_rps for c in p.cells} for p in ps}
    assert by["A10G"][((512, 4096), (0, 128))] == 5  # tputs [[2,1],[5,2]]: row 1 = second input bucket
    assert by["A100-80GB"][((0, 512), (128, 1024))] == 20
    with pytest.raises(ProfileError, match="2 x 3 matrix"):
        import_melange(MELANGE / "melange-release" / "config" / "example.json", model="m",
                       input_edges=[0, 512, 4096], output_edges=[0, 1, 2, 3], slo=SLO)
