"""Level 2: a planned offering becomes SkyPilot resources that SkyPilot's own
optimizer places exactly where the plan priced it, at the price the plan used.

Only SkyPilot's credential and identity edges are patched, as SkyPilot's own
unit tests do (`enable_all_clouds` in tests/common_test_fixtures.py of the
skypilot repo): which clouds are enabled, owner identity, GCP reservations
(an API call) and quota checks (API calls). Catalogs, Resources validation and
the optimizer are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from skypilot_support import DownloadSpy, sky_env  # noqa: E402,F401

from daemon.config import SkyPilotProviderConfig  # noqa: E402
from daemon.domain import Market, Offering  # noqa: E402
from providers.base import FailureKind, LaunchError, LaunchRequest  # noqa: E402
from providers.skypilot import (  # noqa: E402
    SkyPilotProvider,
    TaskTemplateError,
    build_task,
    classify_failure,
    read_catalog_offerings,
)

CLOUDS = ["aws", "gcp", "azure", "lambda"]


@pytest.fixture
def enabled_clouds(sky_env, monkeypatch):
    """Patch SkyPilot's credential/identity edges; returns a setter for the enabled set."""
    sky = sky_env
    from sky import check as sky_check
    from sky.backends import backend_utils
    from sky.clouds.utils import gcp_utils

    registry = {"aws": sky.AWS(), "gcp": sky.GCP(), "azure": sky.Azure(), "lambda": sky.Lambda()}
    state = {"enabled": list(registry.values())}

    monkeypatch.setattr(sky_check, "get_cached_enabled_clouds_or_refresh",
                        lambda *a, **k: list(state["enabled"]))
    monkeypatch.setattr(sky_check, "check_capability",
                        lambda *a, **k: {"default": [str(c) for c in state["enabled"]]})
    monkeypatch.setattr(backend_utils, "check_owner_identity", lambda *a, **k: None)
    monkeypatch.setattr(gcp_utils, "list_reservations_for_instance_type_in_zone", lambda *a, **k: [])
    for cls in (sky.AWS, sky.GCP, sky.Azure, sky.Lambda):
        monkeypatch.setattr(cls, "check_quota_available", classmethod(lambda cls, r: True))

    def set_enabled(names):
        state["enabled"] = [registry[n] for n in names]

    return set_enabled


@pytest.fixture(scope="module")
def catalog_offerings():
    from skypilot_support import home_env, import_sky, sky_home

    import_sky()
    with home_env(sky_home()), DownloadSpy() as spy:
        offers, errors = read_catalog_offerings(CLOUDS, ["A10G", "L4", "T4", "H100"])
    assert errors == [] and spy.calls == []
    return offers


def _pick(offers, **want) -> Offering:
    def ok(o):
        return all((getattr(o, k) == v) for k, v in want.items())

    got = sorted((o for o in offers if ok(o)), key=lambda o: (o.price_per_hour, o.key))
    assert got, f"no offering with {want}"
    return got[0]


def _optimize(sky, offering: Offering, cfg: SkyPilotProviderConfig):
    task = build_task(LaunchRequest(name="fleet-x1", service="chat", model="m", offering=offering), cfg)
    with sky.Dag() as dag:
        dag.add(task)
    sky.Optimizer.optimize(dag, quiet=True)
    return task, task.best_resources


CASES = [
    dict(cloud="aws", gpu="A10G", market=Market.SPOT, region="us-east-1", zone="us-east-1a"),
    dict(cloud="aws", gpu="A10G", market=Market.ON_DEMAND, region="us-east-1", zone="us-east-1b"),
    dict(cloud="aws", gpu="L4", market=Market.SPOT),
    dict(cloud="gcp", gpu="L4", market=Market.SPOT, region="us-east4"),
    dict(cloud="gcp", gpu="T4", market=Market.ON_DEMAND, instance_type="n1-highmem-4", region="us-central1"),
    dict(cloud="gcp", gpu="H100", market=Market.ON_DEMAND),
    dict(cloud="azure", gpu="T4", market=Market.SPOT),
    dict(cloud="lambda", gpu="H100", market=Market.ON_DEMAND),
]


@pytest.mark.parametrize("want", CASES, ids=lambda w: "-".join(str(v) for v in w.values()))
def test_optimizer_places_the_offering_where_and_at_the_price_planned(enabled_clouds, catalog_offerings, sky_env, want):
    sky = sky_env
    offering = _pick(catalog_offerings, **want)
    # cpus is for Slurm; with a pinned instance type it must not get in the way.
    cfg = SkyPilotProviderConfig(serve_port=8000, cpus="1")
    with DownloadSpy() as spy:
        task, best = _optimize(sky, offering, cfg)
    assert spy.calls == []
    assert str(best.cloud).lower() == offering.cloud
    assert best.region == offering.region
    assert best.zone == offering.zone
    assert best.instance_type == offering.instance_type
    assert best.use_spot == (offering.market is Market.SPOT)
    assert best.accelerators == {offering.gpu: offering.gpu_count}
    # The price the plan used is the price SkyPilot's optimizer charges for it.
    assert best.get_cost(3600) == pytest.approx(offering.price_per_hour, rel=1e-6, abs=1e-6)
    # The serving port is opened on real clouds (the router reaches the replica).
    assert list(best.ports or []) == ["8000"] or list(best.ports or []) == [8000]


def test_unpinned_optimizer_agrees_with_our_cheapest_spot_offering(enabled_clouds, catalog_offerings, sky_env):
    """Cross-check: SkyPilot's own cheapest A10G:1 spot placement is our cheapest A10G spot offering."""
    sky = sky_env
    ours = _pick(catalog_offerings, gpu="A10G", gpu_count=1, market=Market.SPOT)
    task = sky.Task(run="true")
    task.set_resources(sky.Resources(accelerators="A10G:1", use_spot=True))
    with sky.Dag() as dag:
        dag.add(task)
    sky.Optimizer.optimize(dag, quiet=True)
    best = task.best_resources
    assert (str(best.cloud).lower(), best.region, best.zone, best.instance_type) == (
        ours.cloud, ours.region, ours.zone, ours.instance_type)
    assert best.get_cost(3600) == pytest.approx(ours.price_per_hour, rel=1e-6)


def test_disabled_cloud_is_a_credentials_failure(enabled_clouds, catalog_offerings, sky_env):
    """With AWS not enabled (no credentials), SkyPilot refuses; we classify it as CREDENTIALS."""
    sky = sky_env
    enabled_clouds(["gcp", "azure", "lambda"])
    offering = _pick(catalog_offerings, cloud="aws", gpu="A10G", market=Market.SPOT)
    with pytest.raises(sky.exceptions.ResourcesUnavailableError) as err:
        _optimize(sky, offering, SkyPilotProviderConfig())
    assert classify_failure(err.value) is FailureKind.CREDENTIALS


def test_offering_that_does_not_exist_is_refused_at_launch(sky_env):
    """A stale plan naming a zone SkyPilot does not know is refused before any request."""
    bogus = Offering("aws", "us-east-1", "us-east-1z", "g5.xlarge", "A10G", 1, Market.SPOT, 0.5)
    p = SkyPilotProvider(SkyPilotProviderConfig(), client=_NoServer())
    with pytest.raises(LaunchError) as err:
        p.launch(LaunchRequest(name="fleet-x2", service="chat", model="m", offering=bogus))
    assert "us-east-1z" in str(err.value)


class _NoServer:
    def launch(self, *a, **k):
        raise AssertionError("must not reach the API server")


def test_task_carries_the_serving_command_and_environment(sky_env):
    offering = Offering("gcp", "us-east4", "us-east4-a", "g2-standard-4", "L4", 1, Market.SPOT, 0.3)
    cfg = SkyPilotProviderConfig(
        setup="pip install vllm", run="vllm serve {model} --port {port}", serve_port=8011, envs={"HF_HOME": "/data/hf"}
    )
    task = build_task(LaunchRequest(name="fleet-chat-7", service="chat", model="meta-llama/Llama-2-7b-hf",
                                    offering=offering), cfg)
    assert task.name == "chat"
    assert task.setup == "pip install vllm"
    assert task.run == "vllm serve meta-llama/Llama-2-7b-hf --port 8011"
    assert task.envs["HF_HOME"] == "/data/hf"
    assert task.envs["FLEET_INSTANCE"] == "fleet-chat-7"
    assert task.envs["FLEET_OFFERING"] == offering.key
    (res,) = list(task.resources)
    assert res.use_spot and res.zone == "us-east4-a" and res.instance_type == "g2-standard-4"


def test_bad_placeholder_in_run_is_a_clear_error(sky_env):
    cfg = SkyPilotProviderConfig(run="serve {modle}")
    offering = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.5)
    with pytest.raises(TaskTemplateError, match=r"provider.skypilot.run.*modle"):
        build_task(LaunchRequest(name="x", service="chat", model="m", offering=offering), cfg)


def test_slurm_offering_asks_partition_and_cpus_not_spot_flag(sky_env):
    """Slurm rejects use_spot; the preemptible partition is the zone."""
    offering = Offering("slurm", "localcluster", "spot", "A10G:1", "A10G", 1, Market.SPOT, 0.0)
    task = build_task(LaunchRequest(name="fleet-s1", service="chat", model="m", offering=offering),
                      SkyPilotProviderConfig(cpus="1"))
    (res,) = list(task.resources)
    assert not res.use_spot
    assert res.zone == "spot" and res.region == "localcluster"
    assert res.accelerators == {"A10G": 1}
    assert res.cpus == "1"
