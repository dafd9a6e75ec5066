"""Finding plugins: the entry points of group "portaft", each loaded on its own.

Built-in backends, templates and formats arrive through the same entry points a
third-party package uses. A plugin that fails to import, or implements a hook portaft
does not have, is recorded as broken and skipped; the others still load.
`PORTAFT_LOAD_PLUGINS=dist-a,dist-b` limits which third-party distributions load
(portaft's own always do), to rule a broken plugin out.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field

import pluggy

GROUP = "portaft"
CORE_DISTRIBUTION = "portaft"


@dataclass
class PluginInfo:
    name: str  # entry-point name (or the name an in-process plugin was registered under)
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # set when the plugin is broken: it failed to import, or a hook of it raised


def entry_points() -> list[importlib.metadata.EntryPoint]:
    allowed = os.environ.get("PORTAFT_LOAD_PLUGINS")
    eps = sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
    if allowed is None:
        return list(eps)
    names = {n.strip() for n in allowed.split(",") if n.strip()} | {CORE_DISTRIBUTION}
    return [ep for ep in eps if ep.dist is not None and ep.dist.name in names]


def load(manager: pluggy.PluginManager, ep: importlib.metadata.EntryPoint) -> PluginInfo:
    """Import one entry point's module and register its hooks; a failure is kept in the info."""
    info = PluginInfo(ep.name, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?", ep.value)
    try:
        module = ep.load()
        manager.register(module, name=ep.name)
    except Exception as exc:  # a broken plugin must not stop the others
        info.error = f"{type(exc).__name__}: {exc}"
        return info
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        manager.unregister(name=ep.name)
        info.error = f"implements a hook portaft does not have: {exc}"
        return info
    info.hooks = sorted(h.name for h in manager.get_hookcallers(module) or [])
    return info
