"""Level 3: end to end on a local Slurm cluster through the real SkyPilot API server.

Needs `scripts/slurm-cluster.sh start` (root; Slurm with a preemptible `spot`
partition and 2 fake A10G GPUs, sshd for user `sky`, offline uv shims) and
FLEET_SLURM_TESTS=1. The API server is our own: temporary HOME (catalogs,
~/.slurm/config, ~/.sky/config.yaml with Slurm prices) and its own port
(SKYPILOT_API_SERVER_LOCAL_PORT), stopped at the end.

Scenario: launch a replica (a tiny HTTP server, cpus=1, A10G:1) on the cheapest
offering (the spot partition), see it healthy and published, preempt it with a
higher-priority Slurm job, detect the preemption in one sync, launch a
replacement on the cheapest market not in cooldown (on-demand), restart the
"daemon" (a fresh provider adopts the running cluster), tear everything down
(orphan teardown and terminate), and check no cluster is left behind.
Timings are printed and written to $FLEET_E2E_TIMINGS (JSON) when set.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from skypilot_support import home_env, import_sky, sky_home  # noqa: E402

from daemon.config import SkyPilotProviderConfig  # noqa: E402
from daemon.domain import Market  # noqa: E402
from providers.base import FailureKind, InstanceStatus, LaunchError, LaunchRequest  # noqa: E402
from providers.skypilot import SkyPilotProvider  # noqa: E402

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("FLEET_SLURM_TESTS") != "1",
                       reason="needs the local Slurm cluster: scripts/slurm-cluster.sh start; FLEET_SLURM_TESTS=1"),
]

STATE = Path(os.environ.get("FLEET_SLURM_STATE", "/var/lib/fleet-slurm"))
# Nominal $/h for the fake GPUs, so the planner-facing offerings have a price
# order (SkyPilot's `slurm.pricing` config; without it Slurm prices are $0).
SLURM_PRICING = """\
slurm:
  pricing:
    accelerators:
      A10G: 1.0
  cluster_configs:
    localcluster:
      partition_configs:
        spot:
          pricing:
            accelerators:
              A10G: 0.4
"""


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def sky_server():
    """Isolated HOME + API server port for the module; stops the server afterwards."""
    ssh_cfg = STATE / "slurm-ssh-config"
    if not ssh_cfg.is_file():
        pytest.fail(f"{ssh_cfg} missing: run scripts/slurm-cluster.sh start first")
    if shutil.which("sbatch") is None:
        pytest.fail("sbatch not on PATH: run scripts/slurm-cluster.sh start first")
    saved_port = os.environ.get("SKYPILOT_API_SERVER_LOCAL_PORT")
    os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"] = str(_free_port())
    sky = import_sky()
    from sky import skypilot_config
    from sky.server import common as server_common

    home = sky_home()
    (home / ".slurm").mkdir(exist_ok=True)
    shutil.copy(ssh_cfg, home / ".slurm" / "config")
    (home / ".sky").mkdir(exist_ok=True)
    (home / ".sky" / "config.yaml").write_text(SLURM_PRICING)
    server_common.get_server_url.cache_clear()  # SkyPilot caches the URL (port) per process
    try:
        with home_env(home):
            skypilot_config.reload_config()
            yield sky
    finally:
        with home_env(home):
            try:
                left = [r["name"] for r in sky.get(sky.status()) if r["name"].startswith("fe2e")]
                for name in left:  # only after a failed test: do not leak clusters
                    sky.get(sky.down(name))
            except Exception:  # noqa: BLE001
                pass
            try:
                sky.api_stop()
            except Exception:  # noqa: BLE001
                pass
        if saved_port is None:
            os.environ.pop("SKYPILOT_API_SERVER_LOCAL_PORT", None)
        else:
            os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"] = saved_port
        server_common.get_server_url.cache_clear()


def _cfg(tmp_path, prefix: str, **kw) -> SkyPilotProviderConfig:
    port = _free_port()
    base = dict(
        clouds=["slurm"],
        gpus=["A10G"],
        cpus="1",
        cluster_prefix=prefix,
        serve_port=port,
        health_path="/health",
        health_timeout_s=1.0,
        # The serving task: a tiny HTTP server whose /health answers "ok".
        setup="mkdir -p ~/www && echo ok > ~/www/health",
        run="cd ~/www && exec python3 -m http.server {port} --bind 127.0.0.1",
        market_cooldown_s=600,
        status_refresh="force",
    )
    base.update(kw)
    return SkyPilotProviderConfig(**base)


def _wait(provider, name, want, timeout_s, every_s=1.0):
    """Sync until `name` has status `want`; returns (instance, syncs, statuses seen)."""
    t0 = time.monotonic()
    seen = []
    syncs = 0
    while True:
        insts = {i.name: i for i in provider.list()}
        syncs += 1
        inst = insts.get(name)
        if inst is not None and (not seen or seen[-1] != inst.status):
            seen.append(inst.status)
        if inst is not None and inst.status is want:
            return inst, syncs, seen
        if inst is not None and inst.status is InstanceStatus.FAILED and want is InstanceStatus.RUNNING:
            pytest.fail(f"{name} failed: {inst.failure} {inst.detail}")
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"{name} not {want} after {timeout_s}s; last {inst}")
        time.sleep(every_s)


def _api_server_rss_mb() -> float:
    """RSS of our API server (the process serving our port) and its workers, in MB."""
    import psutil

    port = os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"]
    total = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "sky.server.server" in cmd and f"--port={port}" in cmd:
            for q in [proc, *proc.children(recursive=True)]:
                try:
                    total += q.memory_info().rss
                except psutil.Error:
                    pass
    return total / 2**20


def _squeue(partition: str | None = None) -> list[str]:
    args = ["squeue", "-h", "-o", "%i %P %j %T"]
    if partition:
        args += ["-p", partition]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split("\n")[:-1]


@pytest.fixture
def prefix():
    """A cluster-name prefix unique to the test; SkyPilot's Slurm runtime dirs of clusters that
    were preempted (never `sky.down`ed: the record vanished) are removed afterwards."""
    p = "fe2e" + uuid.uuid4().hex[:4]
    yield p
    for d in Path("/tmp").glob(f"{p}-*"):
        shutil.rmtree(d, ignore_errors=True)


def test_launch_preempt_replace_teardown_on_slurm(sky_server, tmp_path, prefix):
    sky = sky_server
    timings: dict[str, float] = {}
    cfg = _cfg(tmp_path, prefix)
    p = SkyPilotProvider(cfg)

    t = time.monotonic()
    assert p.list() == []  # starts our API server; nothing of ours exists
    timings["api_server_start_and_first_sync_s"] = time.monotonic() - t

    offers = p.offerings()
    a10g = [o for o in offers if o.gpu == "A10G" and o.gpu_count == 1]
    markets = {o.zone: o for o in a10g}
    assert set(markets) == {"gpu", "spot"}
    assert markets["spot"].market is Market.SPOT and markets["gpu"].market is Market.ON_DEMAND
    assert markets["spot"].price_per_hour == pytest.approx(0.4) and markets["gpu"].price_per_hour == pytest.approx(1.0)

    # -- launch on the cheapest offering: the spot partition --------------------
    first = min(a10g, key=lambda o: o.price_per_hour)
    assert first.market is Market.SPOT
    req = LaunchRequest(name="r1", service="chat", model="tiny", offering=first)
    t_launch = time.monotonic()
    p.launch(req)
    timings["launch_call_s"] = time.monotonic() - t_launch
    assert timings["launch_call_s"] < 10, "launch must not wait for the machine"
    p.launch(req)  # idempotent while pending: no second request
    inst, syncs, seen = _wait(p, "r1", InstanceStatus.RUNNING, timeout_s=300)
    timings["launch_to_healthy_s"] = time.monotonic() - t_launch
    timings["syncs_until_healthy"] = syncs
    timings["api_server_rss_mb"] = _api_server_rss_mb()
    assert seen[0] is InstanceStatus.PENDING and seen[-1] is InstanceStatus.RUNNING
    assert inst.offering_key == first.key
    assert inst.endpoint and inst.endpoint.endswith(f":{cfg.serve_port}")
    with urllib.request.urlopen(inst.endpoint + "/health", timeout=5) as resp:
        assert resp.read().strip() == b"ok"
    assert p.healthy_endpoints("chat") == {"A10Gx1": [inst.endpoint]} and inst.healthy
    spot_jobs = [ln for ln in _squeue("spot") if prefix in ln or "RUNNING" in ln]
    assert spot_jobs, "the replica must run as a job in the spot partition"

    # -- preempt: a higher-priority job takes the GPUs ---------------------------
    t_pre = time.monotonic()
    out = subprocess.run(["sbatch", "-p", "gpu", "--gres=gpu:a10g:2", "-c", "2", "--job-name=blocker", "--output=/dev/null",
                          "--wrap", "sleep 300"], capture_output=True, text=True, check=True).stdout
    blocker = out.split()[-1]
    try:
        deadline = time.monotonic() + 60
        while _squeue("spot") and time.monotonic() < deadline:  # Slurm kills the spot job
            time.sleep(0.5)
        assert _squeue("spot") == [], "Slurm did not preempt the spot job"
        timings["slurm_preemption_s"] = time.monotonic() - t_pre
        t_sync = time.monotonic()
        insts = {i.name: i for i in p.list()}  # ONE sync detects it
        timings["detection_sync_s"] = time.monotonic() - t_sync
        timings["preempt_to_detected_s"] = time.monotonic() - t_pre
        lost = insts["r1"]
        assert lost.status is InstanceStatus.PREEMPTED, lost
        assert "zone=slurm/localcluster/spot" in lost.detail and "lifetime_s=" in lost.detail
        assert "price_per_hour=0.4" in lost.detail
        loss = p.loss("r1")  # structured, for the store's preemption history
        assert (loss["status"], loss["zone"], loss["market"], loss["price_per_hour"]) == (
            "preempted", "slurm/localcluster/spot", "spot", 0.4)
        assert loss["lifetime_s"] > 0
        assert first.key in p.unavailable_markets()
        assert p.healthy_endpoints() == {}
        assert [h["to"] for h in p.history("r1")] == ["running", "preempted"]
    finally:
        subprocess.run(["scancel", blocker], check=False)  # the spike is over

    # -- replacement on the cheapest market not in cooldown -----------------------
    avail = [o for o in p.offerings() if o.gpu == "A10G" and o.gpu_count == 1
             and o.key not in p.unavailable_markets()]
    second = min(avail, key=lambda o: o.price_per_hour)
    assert second.market is Market.ON_DEMAND and second.zone == "gpu"
    with pytest.raises(LaunchError) as refused:  # the cooled-down market is refused outright
        p.launch(LaunchRequest(name="r1b", service="chat", model="tiny", offering=first))
    assert refused.value.kind is FailureKind.NO_CAPACITY
    t_rep = time.monotonic()
    p.launch(LaunchRequest(name="r2", service="chat", model="tiny", offering=second))
    inst2, _, _ = _wait(p, "r2", InstanceStatus.RUNNING, timeout_s=300)
    timings["replacement_launch_to_healthy_s"] = time.monotonic() - t_rep
    assert inst2.offering_key == second.key
    assert p.healthy_endpoints() == {"A10Gx1": [inst2.endpoint]}

    # -- daemon restart: a fresh provider finds the cluster (the loop's sync decides
    #    whether it is an orphan) and tears it down once however often asked -----
    p2 = SkyPilotProvider(_cfg(tmp_path, prefix, serve_port=cfg.serve_port, orphans="terminate"))
    found = {i.name: i for i in p2.list()}
    assert set(found) == {"r2"}
    assert found["r2"].status is InstanceStatus.RUNNING  # adopted: health answered
    assert found["r2"].offering_key == second.key
    p2.terminate("r2")
    p2.terminate("r2")  # a second call does not submit another down

    # -- teardown ----------------------------------------------------------------
    t_down = time.monotonic()
    p.terminate("r1")  # the preempted one: its cluster is already gone
    p.terminate("r1")  # idempotent
    _wait(p2, "r2", InstanceStatus.TERMINATED, timeout_s=180)
    timings["teardown_running_s"] = time.monotonic() - t_down
    _wait(p, "r1", InstanceStatus.TERMINATED, timeout_s=60)
    p.terminate("r2")  # already gone: fine
    _wait(p, "r2", InstanceStatus.TERMINATED, timeout_s=120)
    left = [r["name"] for r in sky.get(sky.status(refresh=sky.StatusRefreshMode.FORCE)) if r["name"].startswith(prefix)]
    assert left == []
    assert _squeue("spot") == [] and not [ln for ln in _squeue("gpu") if "blocker" not in ln]

    print("\nE2E timings:", json.dumps({k: round(v, 2) for k, v in timings.items()}))
    if os.environ.get("FLEET_E2E_TIMINGS"):
        Path(os.environ["FLEET_E2E_TIMINGS"]).write_text(json.dumps(timings, indent=2))


def test_launch_without_cloud_credentials_is_classified(sky_server, tmp_path, prefix):
    """A real refusal: AWS is not enabled here (no credentials) -> CREDENTIALS, market cooled down."""
    from daemon.domain import Offering

    p = SkyPilotProvider(_cfg(tmp_path, prefix, clouds=["aws", "slurm"]))
    aws = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.4591)
    t0 = time.monotonic()
    try:
        p.launch(LaunchRequest(name="nocreds", service="chat", model="tiny", offering=aws))
    except LaunchError as e:  # refused at submission
        kind, detail = e.kind, str(e)
    else:  # or accepted, then failed: reported by the sync
        inst, _, _ = _wait(p, "nocreds", InstanceStatus.FAILED, timeout_s=120)
        kind, detail = inst.failure, inst.detail
        assert aws.key in p.unavailable_markets()
    assert kind is FailureKind.CREDENTIALS, detail
    assert time.monotonic() - t0 < 120
    assert not [r for r in p.list() if r.name.endswith("nocreds") and r.status is InstanceStatus.RUNNING]


def test_cluster_script_is_idempotent():
    """A second `start` starts nothing and changes no recorded pid; `status` sees all four daemons."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm-cluster.sh"
    pids = (STATE / "started.pids").read_text() if (STATE / "started.pids").exists() else None
    # The checkout's own interpreter (scripts/env.sh made it), never a path of one machine.
    env = dict(os.environ, FLEET_SLURM_SKIP_INSTALL="1", FLEET_PYTHON=sys.executable)
    out = subprocess.run([str(script), "start"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "started " not in out.stdout
    assert out.stdout.count("already running") == 4
    if pids is not None:
        assert (STATE / "started.pids").read_text() == pids
    st = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and st.stdout.count(": running") == 4
