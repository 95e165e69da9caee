"""Replicas as real local processes: what the simulated cloud runs when asked to (replica_processes).

Each instance name gets one `python -m providers.local_replica` process on a free loopback
port. The process starts when the launch is accepted (the machine "boots" while the launch
latency runs) and the instance is RUNNING only once its /health answers; its endpoint points
at the port it bound. Terminate sends SIGTERM (requests in flight finish); a spot loss sends
SIGKILL (the machine is gone, streams break mid-way, as on a real cloud).

The run directory holds, per name, the port file the replica writes, a pid file and its
stderr; a provider restarted on the same directory re-attaches to the processes still alive
(a simulated cloud with a state file outlives fleetd, as a real one does).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence


class ReplicaProcesses:
    def __init__(self, run_dir: str | Path | None = None, args: Sequence[str] = (), python: str = sys.executable,
                 health_timeout_s: float = 0.5):
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="gpufleet-replicas-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.python = python
        self.health_timeout_s = health_timeout_s
        self._procs: dict[str, subprocess.Popen] = {}

    def _file(self, name: str, ext: str) -> Path:
        return self.run_dir / f"{name}.{ext}"

    def start(self, name: str, model: str = "local-model", extra: Sequence[str] = ()) -> None:
        """Start the replica of `name` unless one is alive (idempotent, like a launch)."""
        if self.alive(name):
            return
        for ext in ("port", "pid"):
            self._file(name, ext).unlink(missing_ok=True)
        cmd = [self.python, "-m", "providers.local_replica", "--port", "0", "--port-file", str(self._file(name, "port")),
               "--model", model, "--name", name, *self.args, *extra]
        with open(self._file(name, "log"), "ab") as err:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
        self._procs[name] = p
        self._file(name, "pid").write_text(f"{p.pid}\n")

    def pid(self, name: str) -> int | None:
        p = self._procs.get(name)
        if p is not None:
            return p.pid
        try:
            return int(self._file(name, "pid").read_text())
        except (OSError, ValueError):
            return None

    def alive(self, name: str) -> bool:
        p = self._procs.get(name)
        if p is not None:
            return p.poll() is None
        pid = self.pid(name)
        if pid is None:
            return False
        try:  # a process of an earlier provider on this directory: is it still our replica?
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"providers.local_replica" in cmdline and name.encode() in cmdline

    def port(self, name: str) -> int | None:
        try:
            return int(self._file(name, "port").read_text())
        except (OSError, ValueError):
            return None

    def endpoint(self, name: str) -> str | None:
        port = self.port(name)
        return f"http://127.0.0.1:{port}" if port and self.alive(name) else None

    def healthy(self, name: str) -> bool:
        port = self.port(name)
        if not port or not self.alive(name):
            return False
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=self.health_timeout_s)
        try:
            c.request("GET", "/health")
            return c.getresponse().status == 200
        except OSError:
            return False
        finally:
            c.close()

    def _signal(self, name: str, sig: int) -> None:
        pid = self.pid(name)
        if pid is None or not self.alive(name):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, name: str) -> None:
        """SIGTERM: the replica stops accepting and finishes what it serves."""
        self._signal(name, signal.SIGTERM)

    def kill(self, name: str) -> None:
        """SIGKILL: the machine is gone."""
        self._signal(name, signal.SIGKILL)
        p = self._procs.get(name)
        if p is not None:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def names(self) -> list[str]:
        return sorted({p.stem for p in self.run_dir.glob("*.pid")})

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Terminate every replica this directory holds, and wait for our children."""
        for name in self.names():
            self.stop(name)
        for p in self._procs.values():
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
