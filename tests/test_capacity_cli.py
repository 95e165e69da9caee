"""`fleetctl profile` contracts: estimate --json shape, import/list/show, clear errors."""

import json
from pathlib import Path

from typer.testing import CliRunner

from daemon.cli.profile_cmd import app

FIX = Path(__file__).resolve().parent / "fixtures" / "vllm_bench"
run = CliRunner().invoke


def test_estimate_json_contract_over_the_default_grid():
    res = run(app, ["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--gpu", "A10G", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert list(out) == ["model", "gpu", "tp", "slo", "buckets"]
    assert out["model"] == "meta-llama/Llama-2-7b-hf" and out["gpu"] == "A10G" and out["tp"] == 1
    assert out["slo"] == {"ttft_p99_s": 2.0, "tpot_p99_ms": 120.0}
    b = out["buckets"]
    assert len(b) == 16 and all(list(x) == ["input_tokens", "output_tokens", "max_rps"] for x in b)
    assert b[0]["input_tokens"] == [0, 256] and b[0]["output_tokens"] == [0, 64]
    assert b[-1]["input_tokens"] == [4096, 16384] and b[-1]["output_tokens"] == [1024, 4096]  # long documents
    assert b[0]["max_rps"] > b[5]["max_rps"] > 0


def test_estimate_options_tp_dtype_slo_and_edges():
    res = run(app, ["estimate", "--model", "Llama-3-70B", "--gpu", "H100", "--tp", "4", "--dtype", "fp8",
                    "--slo-ttft-s", "1.5", "--slo-tpot-ms", "60", "--input-edges", "0,512,2048",
                    "--output-edges", "0,128", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["tp"] == 4 and out["slo"] == {"ttft_p99_s": 1.5, "tpot_p99_ms": 60.0} and len(out["buckets"]) == 2
    auto = json.loads(run(app, ["estimate", "--model", "Llama-2-70B", "--gpu", "A100-80GB", "--json"]).stdout)
    assert auto["tp"] == 2


def test_estimate_errors_are_clear():
    res = run(app, ["estimate", "--model", "Llama-2-7B", "--gpu", "Voodoo3"])
    assert res.exit_code == 2 and "unknown GPU type 'Voodoo3'" in res.output
    res = run(app, ["estimate", "--model", "Llama-2-70B", "--gpu", "A10G", "--tp", "1"])
    assert res.exit_code == 2 and "does not fit" in res.output
    res = run(app, ["estimate", "--model", "Llama-2-7B", "--gpu", "A10G", "--input-edges", "5,10"])
    assert res.exit_code == 2 and "--input-edges: must start at 0" in res.output
    res = run(app, ["estimate", "--model", "Llama-2-7B", "--gpu", "A10G", "--dtype", "fp4"])
    assert res.exit_code == 2 and "--dtype" in res.output


def test_estimate_table_output_says_estimated():
    res = run(app, ["estimate", "--model", "Qwen-72B", "--gpu", "Ascend-910B"])
    assert res.exit_code == 0, res.output
    assert "Ascend-910B x4" in res.output and "estimated:" in res.output and "assumed" in res.output


def test_import_list_show_roundtrip(tmp_path):
    res = run(app, ["import", *map(str, sorted(FIX.glob("*.json"))), "--gpu", "A100-80GB",
                    "--profiles-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "2 cells, 2 servable" in res.output
    res = run(app, ["estimate", "--model", "Llama-2-7B", "--gpu", "L4", "--save", "--profiles-dir", str(tmp_path),
                    "--json"])
    assert res.exit_code == 0 and len(list(tmp_path.glob("*.json"))) == 2
    listed = json.loads(run(app, ["list", "--profiles-dir", str(tmp_path), "--json"]).stdout)
    assert sorted(r["kind"] for r in listed) == ["estimated", "imported"]
    imp = next(r for r in listed if r["kind"] == "imported")
    assert imp["pool"] == "A100-80GBx1" and imp["curves"] is True and imp["source"].startswith("vllm-bench")
    res = run(app, ["show", "Llama-2-7b-hf__A100", "--profiles-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "imported from vllm-bench" in res.output and "latency curves" in res.output and "7.58" in res.output
    res = run(app, ["show", "Llama-2-7b-hf__A100", "--profiles-dir", str(tmp_path), "--slo-tpot-ms", "20", "--json"])
    shown = json.loads(res.stdout)
    assert {c["max_rps"] for c in shown["cells"]} == {1.978, 0.497}
    res = run(app, ["show", "Llama", "--profiles-dir", str(tmp_path)])
    assert res.exit_code == 2 and "2 profiles" in res.output


def test_import_needs_what_the_file_does_not_say(tmp_path):
    res = run(app, ["import", str(FIX / "openai-1.0qps-Llama-2-7b-hf-in512-out128.json"),
                    "--profiles-dir", str(tmp_path)])
    assert res.exit_code == 2 and "pass --gpu" in res.output
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    res = run(app, ["import", str(junk), "--profiles-dir", str(tmp_path)])
    assert res.exit_code == 2 and "pass --format" in res.output
    res = run(app, ["list", "--profiles-dir", str(tmp_path / "none")])
    assert res.exit_code == 0 and "no profiles" in res.output
