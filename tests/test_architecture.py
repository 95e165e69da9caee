"""The shape of the code, checked: these rules were broken once and the live path broke with them.

- no import cycles between our modules (imports inside functions count: a lazy import is
  still a dependency);
- nothing below the CLI imports the CLI (the loop once took its provider factory from fleetd);
- no module sets another module's globals (fleetctl once wired forecast_cmd.STORE_LOADER at import);
- the provider protocol declares every provider method the loop calls (no getattr probing);
- no script or test defaults to a path that exists on one machine only.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("daemon", "forecast", "providers", "migrations")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in mods:
                return ".".join(parts[:k])
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if is_pkg else m.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                r = resolve(t)
                if r and r != m:
                    graph[m].add(r)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_nothing_below_the_cli_imports_the_cli():
    bad = {m: sorted(d for d in deps if d.startswith("daemon.cli"))
           for m, deps in _graph().items() if not m.startswith("daemon.cli")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_checker_sees_a_cycle_and_a_cli_import():
    g = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(g) == [["a", "b"]]
    assert "daemon.cli.fleetd" not in _graph()["daemon.loop.tick"]  # the old offence, now gone


def test_no_module_sets_another_modules_globals():
    offences = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in imported \
                            and t.value.id[0].islower() and not t.attr.startswith("__"):
                        offences.append(f"{name}:{node.lineno}: {t.value.id}.{t.attr} = ...")
    assert offences == []


def test_the_provider_protocol_declares_everything_the_loop_calls():
    from providers.base import Provider

    declared = {n for n in dir(Provider) if not n.startswith("_")} | set(Provider.__annotations__)
    called = set()
    for path in (REPO / "daemon" / "loop").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                v = node.value  # `provider.X` or `loop.provider.X` (not `cfg.provider.X`, the config)
                if (isinstance(v, ast.Name) and v.id == "provider") or (
                        isinstance(v, ast.Attribute) and v.attr == "provider" and isinstance(v.value, ast.Name)
                        and v.value.id == "loop"):
                    called.add(node.attr)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                arg = node.args[0] if node.args else None
                assert not (isinstance(arg, ast.Name) and arg.id == "provider"), f"{path}: getattr on the provider"
    assert called and called <= declared, f"called but not declared: {called - declared}"


def test_no_machine_specific_paths_in_scripts_and_tests():
    files = subprocess.run(["git", "ls-files", "scripts", "tests", ".ci", "bench"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    pattern = re.compile(r"(:-|= *[\"']?)/tmp/[A-Za-z0-9_]")
    hits = [f"{f}:{k}: {line.strip()}" for f in files if (REPO / f).is_file() and f != "tests/test_architecture.py"
            for k, line in enumerate((REPO / f).read_text(errors="replace").splitlines(), 1)
            if pattern.search(line) and "mktemp" not in line]
    assert hits == []
