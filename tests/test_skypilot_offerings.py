"""Level 1: offerings from SkyPilot's real catalog files (../shared/data/skypilot-catalog)
in a temporary HOME, with every HTTP request refused and recorded.

Prices are snapshots; besides the two values DATA-README pins to these exact
files (g5.xlarge us-east-1: on-demand 1.006, spot 0.4591), tests check relations
and cross-check our per-zone index against SkyPilot's own price functions.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from skypilot_support import DownloadSpy, home_env, import_sky, sky_env, sky_home  # noqa: E402,F401

from daemon.config import SkyPilotProviderConfig  # noqa: E402
from daemon.domain import Market  # noqa: E402
from providers.skypilot import SkyPilotProvider, read_catalog_offerings  # noqa: E402

CLOUDS = ["aws", "gcp", "azure", "lambda"]
GPUS = ["A10G", "L4", "T4", "A100-80GB", "H100"]


@pytest.fixture(scope="module")
def catalog():
    """(offerings, errors, download attempts), read once for the module."""
    import_sky()
    with home_env(sky_home()), DownloadSpy() as spy:
        offers, errors = read_catalog_offerings(CLOUDS, GPUS)
    return offers, errors, spy.calls


def test_reads_every_cloud_without_downloading(catalog):
    offers, errors, calls = catalog
    assert calls == [], f"SkyPilot tried to download: {calls}"
    assert errors == []
    assert {o.cloud for o in offers} == set(CLOUDS)
    assert {o.gpu for o in offers} == set(GPUS)
    assert len({o.key for o in offers}) == len(offers), "offering keys must be unique"


def test_pinned_prices_of_g5_xlarge_in_us_east_1(catalog):
    offers, _, _ = catalog
    g5 = [o for o in offers if o.instance_type == "g5.xlarge" and o.region == "us-east-1"]
    on_demand = {o.price_per_hour for o in g5 if o.market is Market.ON_DEMAND}
    assert on_demand == {1.006}
    spot = min((o for o in g5 if o.market is Market.SPOT), key=lambda o: o.price_per_hour)
    assert spot.price_per_hour == pytest.approx(0.4591)
    assert spot.zone is not None and spot.zone.startswith("us-east-1")  # zone names, not AWS zone ids
    assert (spot.gpu, spot.gpu_count) == ("A10G", 1)
    assert len({o.zone for o in g5 if o.market is Market.SPOT}) > 1  # one offering per zone


def test_spot_is_cheaper_than_on_demand_at_the_same_place(catalog):
    offers, _, _ = catalog
    by_place = {}
    for o in offers:
        by_place.setdefault((o.cloud, o.region, o.zone, o.instance_type), {})[o.market] = o.price_per_hour
    pairs = [(k, v) for k, v in by_place.items() if len(v) == 2]
    assert len(pairs) > 100
    worse = [(k, v) for k, v in pairs if v[Market.SPOT] > v[Market.ON_DEMAND]]
    assert worse == []
    # A few places price spot at the on-demand price (e.g. AWS me-central-1a g5.xlarge).
    cheaper = sum(v[Market.SPOT] < v[Market.ON_DEMAND] for _, v in pairs)
    assert cheaper >= 0.95 * len(pairs)


def test_shapes_per_cloud(catalog):
    offers, _, _ = catalog
    lam = [o for o in offers if o.cloud == "lambda"]
    assert lam and all(o.market is Market.ON_DEMAND for o in lam)  # Lambda sells no spot
    az = [o for o in offers if o.cloud == "azure"]
    assert az and all(o.zone is None for o in az)  # no zones in SkyPilot's Azure catalog
    assert all(o.price_per_hour > 0 and o.gpu_count >= 1 for o in offers)
    # GCP T4 is attached to an n1 host type.
    t4 = [o for o in offers if o.cloud == "gcp" and o.gpu == "T4"]
    assert t4 and all(o.instance_type.startswith("n1-") for o in t4)


def test_zone_prices_agree_with_skypilot_price_functions(catalog, sky_env):
    """Our one-pass zone index vs. sky.catalog.get_hourly_cost (+ attached GPU), on a sample."""
    from sky import catalog as sky_catalog

    offers, _, _ = catalog
    zoned = sorted((o for o in offers if o.zone is not None), key=lambda o: o.key)
    sample = random.Random(7).sample(zoned, 40)
    for o in sample:
        spot = o.market is Market.SPOT
        host = sky_catalog.get_hourly_cost(o.instance_type, use_spot=spot, region=o.region, zone=o.zone, clouds=o.cloud)
        expected = host
        # SkyPilot's GCP catalog prices the host type and its GPUs in separate
        # rows (also for g2/a2/a3 types); the instance costs their sum.
        if o.cloud == "gcp":
            expected += sky_catalog.get_accelerator_hourly_cost(
                o.gpu, o.gpu_count, use_spot=spot, region=o.region, zone=o.zone, clouds=o.cloud)
        assert o.price_per_hour == pytest.approx(expected, rel=1e-6), o


def test_cheapest_zone_is_the_region_price_skypilot_lists(catalog, sky_env):
    """list_accelerators' per-region spot price is the cheapest zone's; ours must contain it."""
    from sky import catalog as sky_catalog

    offers, _, _ = catalog
    infos = sky_catalog.list_accelerators(gpus_only=True, name_filter="^(?:A10G|L4)$", clouds="aws",
                                          all_regions=True, require_price=True)
    checked = 0
    for rows in infos.values():
        for info in rows:
            ours = [o.price_per_hour for o in offers if o.cloud == "aws" and o.region == info.region
                    and o.instance_type == info.instance_type and o.market is Market.SPOT]
            if ours and info.spot_price == info.spot_price:  # not NaN
                assert min(ours) == pytest.approx(float(info.spot_price), rel=1e-6)
                checked += 1
    assert checked > 10


def test_regions_and_gpus_filter(sky_env):
    offers, errors = read_catalog_offerings(["aws", "gcp"], ["L4"], regions=["us-east4", "us-east-1"])
    assert errors == []
    assert offers and {o.gpu for o in offers} == {"L4"}
    assert {o.region for o in offers} <= {"us-east4", "us-east-1"}
    assert {o.cloud for o in offers} == {"aws", "gcp"}


def test_unknown_cloud_is_reported_not_fatal(sky_env):
    offers, errors = read_catalog_offerings(["aws", "nosuchcloud"], ["A10G"])
    assert offers and all(o.cloud == "aws" for o in offers)
    assert len(errors) == 1 and errors[0].startswith("nosuchcloud:")


class _Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


def test_offerings_are_cached_with_their_read_time_and_refreshed_on_schedule(sky_env):
    clock = _Clock()
    p = SkyPilotProvider(SkyPilotProviderConfig(clouds=["aws"], gpus=["A10G"], catalog_refresh_s=3600), clock=clock)
    first = p.offerings_snapshot()
    assert first.read_at == clock.now and first.offerings
    clock.now += timedelta(seconds=3599)
    assert p.offerings_snapshot() is first  # cached
    assert p.offerings() == list(first.offerings)
    clock.now += timedelta(seconds=2)
    second = p.offerings_snapshot()
    assert second is not first and second.read_at == clock.now
    assert second.offerings == first.offerings  # same files, same prices
    # A decision made with the first snapshot keeps its prices and its time.
    assert first.read_at < second.read_at


def test_provider_offers_the_gpus_services_allow(sky_env):
    from daemon.config import Config, ServiceConfig

    cfg = Config(services=[ServiceConfig(name="chat", gpus=["L4"])],
                 provider={"skypilot": {"clouds": ["aws"]}})
    p = SkyPilotProvider.from_config(cfg)
    assert {o.gpu for o in p.offerings()} == {"L4"}


# -- CLI ------------------------------------------------------------------------


def _cli(args, env_home=True):
    from typer.testing import CliRunner

    from daemon.cli.offerings_cmd import app

    return CliRunner().invoke(app, args)


def test_cli_json_contract(sky_env):
    with DownloadSpy() as spy:
        r = _cli(["--provider", "skypilot", "--cloud", "aws", "--gpu", "A10G", "--json"])
    assert r.exit_code == 0, r.output
    assert spy.calls == []
    rows = json.loads(r.stdout)
    assert rows, "no offerings"
    for row in rows:
        assert {"cloud", "region", "zone", "instance_type", "gpu", "gpu_count", "market", "price_per_hour"} <= row.keys()
        assert row["cloud"] == "aws" and row["gpu"] == "A10G"
        assert row["market"] in ("on-demand", "spot")
        assert isinstance(row["price_per_hour"], float) and isinstance(row["gpu_count"], int)
    prices = [row["price_per_hour"] for row in rows]
    assert prices == sorted(prices)  # cheapest first
    assert any(r_["instance_type"] == "g5.xlarge" and r_["zone"] == "us-east-1a" and r_["market"] == "spot"
               and r_["price_per_hour"] == pytest.approx(0.4591) for r_ in rows)


def test_cli_table_and_config_file(sky_env, tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[provider]\nkind = "skypilot"\n[provider.skypilot]\nclouds = ["gcp"]\nregions = ["us-east4"]\n')
    r = _cli(["--config", str(cfg), "--gpu", "L4", "--limit", "3"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["CLOUD", "REGION", "ZONE"]
    assert len(lines) == 1 + 3 + 1
    assert all(" us-east4 " in ln for ln in lines[1:4])
    assert lines[-1].endswith("(skypilot)")  # the provider named by the config


def test_cli_bad_config_names_file_and_key(sky_env, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[provider.skypilot]\nclouds = "aws"\n')
    r = _cli(["--config", str(cfg), "--json"])
    assert r.exit_code == 2
    assert str(cfg) in r.output and "provider.skypilot.clouds" in r.output


def test_cli_simulated_provider_contract_or_clear_error(tmp_path):
    r = _cli(["--provider", "simulated", "--json"])
    if r.exit_code != 0:
        assert r.output.startswith("error: ") and "Traceback" not in r.output
        pytest.skip(f"simulated provider not usable here: {r.output.strip()}")
    rows = json.loads(r.stdout)
    assert rows and all(row["market"] in ("on-demand", "spot") for row in rows)


def test_no_offering_where_the_gpu_is_missing_though_the_host_type_exists(catalog):
    """GCP us-west1-c has n1-standard-64 hosts but no T4 rows: SkyPilot cannot put T4:4 there."""
    offers, _, _ = catalog
    t4x4 = {o.zone for o in offers if o.cloud == "gcp" and o.gpu == "T4" and o.gpu_count == 4
            and o.region == "us-west1" and o.instance_type == "n1-standard-64"}
    assert t4x4 == {"us-west1-a", "us-west1-b"}
