"""SIGHUP: re-read the configuration file; a bad file is refused and the running config stays.

`reload_config` is pure apart from reading the file: it returns the config to run
with, whether the new file was accepted, the error naming the file and key when
not, and which changed keys take effect only after a restart (the objects built
once at start: store, provider, demand sources, metrics exporter, leader lease).
fleetd's SIGHUP handler calls it, logs the outcome and swaps the config between
ticks (never under a tick in flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config, ConfigError, load_config, parse_config

# Key prefixes read once at start: a change is reported, and needs `systemctl restart fleetd`.
RESTART_ONLY = ("store.", "provider.", "metrics.", "leader.", "buckets.")
_SERVICE_RESTART = (".name", ".demand.")


@dataclass(frozen=True)
class ReloadResult:
    config: Config  # what to run with from now on: the new config, or the old one when refused
    accepted: bool
    error: str | None = None
    changed: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.accepted:
            return f"config reload refused, old config kept: {self.error}"
        if not self.changed:
            return "config reloaded: no change"
        msg = f"config reloaded: {len(self.changed)} key(s) changed ({', '.join(self.changed[:8])})"
        if self.restart_needed:
            msg += f"; needs a restart to take effect: {', '.join(self.restart_needed[:8])}"
        return msg


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def changed_keys(old: Config, new: Config) -> tuple[str, ...]:
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return tuple(sorted(k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object())))


def _needs_restart(key: str) -> bool:
    if key.startswith(RESTART_ONLY):
        return True
    if key.startswith("services["):
        rest = key[key.index("]") + 1:]
        return rest == "" or any(rest.startswith(p) or rest == p.rstrip(".") for p in _SERVICE_RESTART)
    return False


def reload_config(path: str | Path | None, current: Config) -> ReloadResult:
    """Load `path`; on success the config to run is the new one with what needs a restart kept
    from `current` (so what runs is what the config says), and those keys are reported."""
    try:
        new = load_config(path)
    except ConfigError as e:
        return ReloadResult(config=current, accepted=False, error=str(e))
    changed = changed_keys(current, new)
    restart = [k for k in changed if _needs_restart(k)]
    keep: dict = {k.rstrip("."): getattr(current, k.rstrip(".")) for k in RESTART_ONLY}
    if [s.name for s in new.services] != [s.name for s in current.services]:
        restart.append("services (added, removed or renamed)")
        keep["services"] = current.services
    else:
        keep["services"] = [n.model_copy(update={"demand": o.demand})
                            for n, o in zip(new.services, current.services)]
    try:  # the cross-checks again, over the merged whole (capacity tables vs the kept bucket grid)
        run = parse_config(new.model_copy(update=keep).model_dump(), f"{path} (merged with the running config)")
    except ConfigError as e:
        return ReloadResult(config=current, accepted=False, error=f"cannot apply without a restart: {e}")
    return ReloadResult(config=run, accepted=True, changed=changed, restart_needed=tuple(dict.fromkeys(restart)))
