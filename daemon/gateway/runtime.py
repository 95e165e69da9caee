"""HAProxy's Runtime API over its unix socket: commands, and parsers of what it answers.

One connection per command (HAProxy's non-interactive mode: it answers and closes), so a
half-read answer never leaks into the next command. Payload commands (`add map ... <<`)
send their lines after the command and end with an empty line.

HAProxy answers errors in prose on the same channel as results (e.g. "No such server."),
so each command that changes state says what a successful answer looks like; anything else
raises `RuntimeApiError` with the command and the answer.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Iterable

from daemon.gateway.maps import MapRow, parse_map_rows
from daemon.gateway.state import Observed, ObservedServer


class RuntimeApiError(Exception):
    """A command HAProxy refused or a socket that does not answer; the message names the command."""


@dataclass(frozen=True)
class Answer:
    command: str
    text: str


class RuntimeClient:
    def __init__(self, socket_path: str, timeout_s: float = 5.0):
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def raw(self, command: str, payload: str | None = None) -> str:
        """Send one command (and its payload lines) and return HAProxy's whole answer."""
        data = command.rstrip("\n")
        if payload is not None:
            data += " <<\n" + payload.rstrip("\n") + "\n"
        data += "\n"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            try:
                s.connect(self.socket_path)
            except OSError as e:
                raise RuntimeApiError(f"cannot reach HAProxy's Runtime API at {self.socket_path}: "
                                      f"{e.strerror or e}") from None
            s.sendall(data.encode())
            chunks = []
            while True:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    raise RuntimeApiError(f"{command!r}: no complete answer within {self.timeout_s} s") from None
                if not b:
                    break
                chunks.append(b)
        finally:
            s.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def run(self, command: str, payload: str | None = None, expect: str | None = "") -> str:
        """Run a command that changes state; `expect` is a substring of a good answer ("" = empty answer)."""
        text = self.raw(command, payload)
        if expect is not None:
            body = text.strip()
            ok = (body == "") if expect == "" else (expect in body)
            if not ok:
                raise RuntimeApiError(f"{command!r}: {body or 'empty answer'}")
        return text

    # -- reads ----------------------------------------------------------------------

    def backends(self) -> list[str]:
        return parse_backends(self.raw("show backend"))

    def servers_state(self) -> list[dict]:
        return parse_servers_state(self.raw("show servers state"))

    def servers_conn(self) -> dict[tuple[str, str], int]:
        return parse_servers_conn(self.raw("show servers conn"))

    def map_rows(self, path: str) -> tuple[MapRow, ...] | None:
        """Rows of a map HAProxy loaded from `path`; None if it loads no such map."""
        text = self.raw(f"show map {path}")
        if "Unknown map identifier" in text:
            return None
        return parse_map_rows(text)

    def swap_map(self, path: str, rows: Iterable[MapRow]) -> int:
        """Replace a map's entries atomically (prepare, add to the new version, commit); returns the version."""
        answer = self.run(f"prepare map {path}", expect="New version created:")
        m = re.search(r"New version created:\s*(\d+)", answer)
        if not m:
            raise RuntimeApiError(f"'prepare map {path}': unexpected answer {answer.strip()!r}")
        ver = int(m.group(1))
        lines = "\n".join(r.line() for r in rows)
        if lines:
            self.run(f"add map @{ver} {path}", payload=lines)
        self.run(f"commit map @{ver} {path}")
        return ver

    def observe(self, map_paths: Iterable[str]) -> Observed:
        """Backends, servers (with their connections) and the given maps, in 3 + len(maps) reads."""
        backends = frozenset(self.backends())
        conns = self.servers_conn()
        servers = {}
        for row in self.servers_state():
            key = (row["be_name"], row["srv_name"])
            servers[key] = ObservedServer(
                backend=row["be_name"], name=row["srv_name"], addr=row["srv_addr"],
                port=_int(row.get("srv_port"), 0), op_state=_int(row.get("srv_op_state"), 0),
                admin_state=_int(row.get("srv_admin_state"), 0), connections=conns.get(key, 0),
            )
        maps = {p: self.map_rows(p) for p in map_paths}
        return Observed(backends, servers, maps)


def _int(v, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def parse_backends(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def parse_servers_state(text: str) -> list[dict]:
    """`show servers state`: a version line, a '# col col ...' header, then one server per line."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = None
    out = []
    for ln in lines:
        if ln.startswith("#"):
            header = ln.lstrip("#").split()
            continue
        if header is None:
            continue  # the format version line
        vals = ln.split()
        out.append(dict(zip(header, vals)))
    return out


def parse_servers_conn(text: str) -> dict[tuple[str, str], int]:
    """`show servers conn`: per 'backend/server', the connections in use now (used_cur)."""
    header = None
    out: dict[tuple[str, str], int] = {}
    for ln in text.splitlines():
        if not ln.strip():
            continue
        if ln.startswith("#"):
            header = ln.lstrip("#").split()
            continue
        if header is None:
            continue
        vals = ln.split()
        row = dict(zip(header, vals))
        be, _, srv = row.get("bkname/svname", "").partition("/")
        if be and srv:
            out[(be, srv)] = _int(row.get("used_cur"), 0)
    return out
