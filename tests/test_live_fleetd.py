"""fleetd as users run it: a process, wall-clock time, real feeds, for minutes.

Each test runs `fleetd` as a subprocess for more than two minutes with 2-second
ticks against the simulated cloud (with a state file, so it outlives restarts),
while the test writes the demand: a request log it appends to (JSONL and the
Azure 2023 CSV format), or vLLM-format metrics that a real Prometheus scrapes.
The demand steps to 3x in the middle and back. Checked afterwards, from the
store and from `fleetctl status --json` taken during the run:

- every tick's decision is `applied` (a SIGKILLed tick may be `interrupted`);
- the store's windows hold exactly the requests written, bucket by bucket
  (request logs; Prometheus's increase() extrapolates, so within a tolerance);
- the fleet grows after the step and shrinks after it;
- a SIGKILL and restart loses no window, counts none twice, launches nothing twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from tests.live_support import (
    Fleetd, RequestWriter, decisions, emitted_until, fleet_config, fleetctl_status, running, service_block,
    stored_counts, wait_until,
)

pytestmark = pytest.mark.slow

BASE_S, STEP_S, AFTER_S = 40.0, 40.0, 50.0  # 1x for 40 s, 3x for 40 s, 1x for 50 s: 130 s of demand


def step_rate(base: float):
    return lambda t: base * (3.0 if BASE_S <= t < BASE_S + STEP_S else 1.0)


def _sample_status(tmp, at_s: list[float], t0: float, out: dict) -> threading.Thread:
    def run():
        for a in at_s:
            time.sleep(max(0.0, t0 + a - time.time()))
            out[a] = fleetctl_status(tmp)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _finish(writers, tmp, fleetd: Fleetd, services):
    for w in writers:
        w.stop()
    # The last window is counted once its end plus lateness has passed.
    for w, svc in zip(writers, services):
        assert wait_until(lambda: (emitted_until(tmp, svc) or 0) > w.last_ts, 30), \
            f"{svc}: fleetd never counted the last window\n{fleetd.log_text()[-3000:]}"
    assert fleetd.stop() == 0, fleetd.log_text()[-3000:]


def _assert_grew_and_shrank(samples: dict, service: str):
    before, peak, after = (running(samples[k], service) for k in sorted(samples))
    assert peak > before and after < peak, f"{service}: running replicas {before} -> {peak} -> {after}"


def test_request_logs_jsonl_and_azure_csv(tmp_path):
    chat_log, code_log = tmp_path / "chat.jsonl", tmp_path / "code.csv"
    cfg = fleet_config(tmp_path, service_block("chat", f'kind = "request-log"\npath = "{chat_log}"\nlateness_s = 2')
                       + service_block("code", f'kind = "request-log"\npath = "{code_log}"\nformat = "azure"\n'
                                               'lateness_s = 2'))
    writers = [RequestWriter(chat_log, "jsonl", step_rate(6.0), seed=1),
               RequestWriter(code_log, "azure", step_rate(4.0), seed=2)]
    fleetd = Fleetd(cfg, tmp_path)
    fleetd.start()
    t0 = time.time()
    for w in writers:
        w.start()
    samples: dict = {}
    sampler = _sample_status(tmp_path, [BASE_S - 2, BASE_S + STEP_S - 2, BASE_S + STEP_S + AFTER_S - 2], t0, samples)
    time.sleep(BASE_S + STEP_S + AFTER_S)
    sampler.join(60)
    assert fleetd.alive(), fleetd.log_text()[-3000:]
    _finish(writers, tmp_path, fleetd, ["chat", "code"])

    rows = decisions(tmp_path)
    assert len(rows) >= 50, f"only {len(rows)} ticks in {time.time() - t0:.0f} s"
    assert [r for r in rows if r[1] != "applied"] == []
    for w, svc in zip(writers, ["chat", "code"]):
        assert w.written > 500
        assert stored_counts(tmp_path, svc) == w.counts, f"{svc}: the store's windows differ from what was written"
        _assert_grew_and_shrank(samples, svc)
    # What a gateway reads: the routes and the healthy endpoints, both services.
    eps = json.loads((tmp_path / "endpoints.json").read_text())
    assert set(eps["services"]) == {"chat", "code"}
    assert "tick_failed" not in fleetd.log_text()


def test_fleetd_sigkilled_and_restarted_loses_and_repeats_nothing(tmp_path):
    log = tmp_path / "chat.jsonl"
    cfg = fleet_config(tmp_path, service_block("chat", f'kind = "request-log"\npath = "{log}"\nlateness_s = 2'))
    writer = RequestWriter(log, "jsonl", step_rate(6.0), seed=3)
    fleetd = Fleetd(cfg, tmp_path)
    fleetd.start()
    t0 = time.time()
    writer.start()
    kills = 0
    for at in (35.0, 62.0, 97.0):  # before, inside and after the step
        time.sleep(max(0.0, t0 + at - time.time()))
        fleetd.kill()
        kills += 1
        time.sleep(1.5)  # requests keep arriving while it is down
        fleetd.start()
    time.sleep(max(0.0, t0 + BASE_S + STEP_S + AFTER_S - time.time()))
    _finish([writer], tmp_path, fleetd, ["chat"])

    rows = decisions(tmp_path)
    bad = [r for r in rows if r[1] not in ("applied", "interrupted")]
    assert bad == [] and sum(r[1] == "interrupted" for r in rows) <= kills
    # No window lost or counted twice: request for request, and each window once.
    assert stored_counts(tmp_path, "chat") == writer.counts
    with sqlite3.connect(tmp_path / "fleet.db") as c:
        starts = [r[0] for r in c.execute("SELECT window_start FROM demand_windows WHERE service = 'chat' "
                                          "GROUP BY window_start, input_bucket, output_bucket HAVING COUNT(*) > 1")]
        assert starts == []
        names = [r[0] for r in c.execute("SELECT name FROM instances")]
        stuck = c.execute("SELECT COUNT(*) FROM instances WHERE state IN ('requested')").fetchone()[0]
        launched = {r[0] for r in c.execute("SELECT name FROM instances WHERE launched_at IS NOT NULL")}
    assert stuck == 0
    # No duplicate launch: the cloud holds exactly one machine per launched instance name.
    cloud = json.loads((tmp_path / "cloud.json").read_text())
    held = [i["name"] for i in cloud["instances"]]
    assert len(held) == len(set(held)) and set(held) <= set(names) and set(held) == launched
    assert "Traceback" not in fleetd.log_text().replace("tick_missed", "")


# -- the same through a real Prometheus scraping vLLM-format metrics ---------------------------

def test_prometheus_feed(tmp_path):
    from tests.test_demand_prometheus import start_prometheus

    vllm = _DrivenVllm(step_rate(8.0))
    with start_prometheus(tmp_path, vllm.exposition) as base:
        cfg = fleet_config(tmp_path, service_block("chat", f'kind = "prometheus"\n[services.demand.prometheus]\n'
                                                           f'url = "{base}"\nselector = \'model_name="llama"\'\n'
                                                           'lateness_s = 3\nbackfill_s = 0'),
                           tick_s=2.5, window_s=5.0)
        fleetd = Fleetd(cfg, tmp_path)
        fleetd.start()
        t0 = time.time()
        vllm.start()
        samples: dict = {}
        sampler = _sample_status(tmp_path, [BASE_S - 2, BASE_S + STEP_S - 2, BASE_S + STEP_S + AFTER_S - 2], t0,
                                 samples)
        time.sleep(BASE_S + STEP_S + AFTER_S)
        sampler.join(60)
        vllm.stop()
        end = time.time()
        assert wait_until(lambda: (emitted_until(tmp_path, "chat") or 0) >= end - 5, 30)
        assert fleetd.stop() == 0, fleetd.log_text()[-3000:]
    rows = decisions(tmp_path)
    assert len(rows) >= 40 and [r for r in rows if r[1] != "applied"] == []
    stored = sum(stored_counts(tmp_path, "chat").values())
    # increase() extrapolates at window edges and the first and last windows are partial.
    assert stored == pytest.approx(vllm.n, rel=0.15), (stored, vllm.n)
    _assert_grew_and_shrank(samples, "chat")


class _DrivenVllm(threading.Thread):
    """Counters and histograms of a vLLM server serving at rate(t), exposed in Prometheus text format."""

    def __init__(self, rate):
        super().__init__(daemon=True)
        from tests.test_demand_prometheus import GEN_EDGES, PROMPT_EDGES

        self.rate, self.n, self.prompt, self.gen = rate, 0, [], []
        self.edges = (PROMPT_EDGES, GEN_EDGES)
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self):
        t0, last, owed = time.time(), time.time(), 0.0
        k = 0
        while not self.halt.wait(0.05):
            now = time.time()
            owed += self.rate(now - t0) * (now - last)
            last = now
            with self.lock:
                while owed >= 1:
                    owed -= 1
                    p, g = (300, 100) if k % 2 else (60, 20)
                    self.n += 1
                    self.prompt.append(p)
                    self.gen.append(g)
                    k += 1

    def stop(self):
        self.halt.set()
        self.join(5)

    def exposition(self) -> str:
        from tests.test_demand_prometheus import exposition

        with self.lock:
            return exposition(self.n, list(self.prompt), list(self.gen))
