import pytest

from daemon.config import ConfigError, default_config, load_config, parse_config
from tests.conftest import REPO


def test_example_config_equals_builtin_defaults():
    assert load_config(REPO / "config.example.toml") == default_config()


def test_none_gives_defaults():
    assert load_config(None) == default_config()


def _err(data):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "f.toml")
    return str(e.value)


def test_errors_name_key_path_and_allowed_values():
    msg = _err({"services": [{"name": "a", "slo": {"tpot_p99_ms": -5}}], "provider": {"kind": "aws"}})
    assert "f.toml" in msg
    assert "services[0].slo.tpot_p99_ms" in msg
    assert "provider.kind" in msg and "'simulated' or 'skypilot'" in msg


def test_unknown_key_is_an_error():
    msg = _err({"policy": {"budget": 10}})
    assert "policy.budget: unknown key" in msg


def test_wrong_type():
    assert "policy.max_launches_per_tick" in _err({"policy": {"max_launches_per_tick": "many"}})


def test_trace_source_needs_path():
    assert "path is required" in _err({"services": [{"name": "a", "demand": {"kind": "trace"}}]})


def test_capacity_shape_must_match_grid():
    msg = _err({"capacity": [{"model": "m", "gpu": "A10G", "tputs": [[1.0]]}]})
    assert "capacity[0].tputs" in msg


def test_duplicate_service_names():
    assert "unique" in _err({"services": [{"name": "a"}, {"name": "a"}]})


def test_bad_bucket_edges():
    assert "input_edges" in _err({"buckets": {"input_edges": [0, 10, 5]}})


def test_invalid_toml_and_missing_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[store\nurl=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_config_check_cli(tmp_path):
    from typer.testing import CliRunner

    from daemon.cli.fleetctl import app

    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nheadroom = "lots"\n')
    r = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert r.exit_code == 2
    assert "policy.headroom" in r.output
    r = CliRunner().invoke(app, ["config", "check", str(REPO / "config.example.toml")])
    assert r.exit_code == 0, r.output
