"""Finding plugins (entry-point group "portaft") and collecting what they register.

Built-in backends and templates arrive through the same entry points a third-party
package uses. A plugin that fails to import is recorded as broken and skipped; the
others still load. `PORTAFT_LOAD_PLUGINS=dist-a,dist-b` limits which third-party
distributions load (portaft's own always do), to rule a broken plugin out.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import BackendUnavailable, UserError
from .protocols import BACKEND_MEMBERS

GROUP = "portaft"
CORE_DISTRIBUTION = "portaft"


@dataclass
class PluginInfo:
    name: str  # entry-point name
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # set when the plugin is broken


@dataclass
class TrainingCallback:
    """A callback a plugin registered for one run (register_callbacks)."""

    callback: Any  # a transformers TrainerCallback instance or class: what Trainer.add_callback takes
    plugin: str
    report_to: str | None = None  # the train.report_to name it serves (transformers is not given that name)
    note: str | None = None  # one line for the run's notes, e.g. where the logs go


class Plugins:
    """One plugin manager plus what its plugins registered. Build a fresh one per test."""

    def __init__(self, entry_points: list[importlib.metadata.EntryPoint] | None = None):
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)
        self.info: list[PluginInfo] = []
        self.problems: list[str] = []  # registered objects that were refused
        self._backends: dict[str, Any] | None = None
        self._templates: dict[str, str] | None = None
        self._formats: dict[str, Any] | None = None
        self._distributions: dict[str, list[str]] | None = None
        for ep in entry_points if entry_points is not None else _entry_points():
            self._load(ep)

    def _load(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist else "?"
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?", ep.value)
        self.info.append(info)
        try:
            module = ep.load()
            self.manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not stop the others
            info.error = f"{type(exc).__name__}: {exc}"
            return
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(name=ep.name)
            info.error = f"implements a hook portaft does not have: {exc}"
            return
        info.hooks = sorted(h.name for h in self.manager.get_hookcallers(module) or [])

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (a module or object with hookimpls)."""
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        self.info.append(PluginInfo(name, "(in process)", "", getattr(plugin, "__name__", repr(plugin)),
                                    sorted(h.name for h in self.manager.get_hookcallers(plugin) or [])))
        self._backends = self._templates = self._formats = None

    def _provider(self, backend: Any) -> str:
        """The distribution that ships the backend's module (e.g. 'portaft')."""
        if self._distributions is None:  # scans every installed package: once per Plugins
            self._distributions = importlib.metadata.packages_distributions()
        top = type(backend).__module__.split(".")[0]
        dists = self._distributions.get(top)
        return dists[0] if dists else top

    # --- backends ----------------------------------------------------------------------

    @property
    def backends(self) -> dict[str, Any]:
        """Backends by name, highest priority first. On a name clash portaft's own
        backend wins, else the plugin registered first; the loser is reported."""
        if self._backends is None:
            offered: list[Any] = []
            self.manager.hook.register_backends(register=offered.append)
            offered.reverse()  # pluggy calls the last-registered plugin first
            offered.sort(key=lambda backend: self._provider(backend) != CORE_DISTRIBUTION)
            found: dict[str, Any] = {}
            for backend in offered:
                missing = [m for m in BACKEND_MEMBERS if not hasattr(backend, m)]
                name = getattr(backend, "name", repr(backend))
                if missing:
                    self.problems.append(f"backend {name!r} from {self._provider(backend)} was refused: it lacks {', '.join(missing)}.")
                elif name in found:
                    self.problems.append(
                        f"backend {name!r} from {self._provider(backend)} was refused: {self._provider(found[name])} already registers that name."
                    )
                else:
                    found[name] = backend
            self._backends = dict(sorted(found.items(), key=lambda kv: -kv[1].priority))
        return self._backends

    def get_backend(self, name: str) -> Any:
        """The backend called `name`, available or not; UserError if none has that name."""
        try:
            return self.backends[name]
        except KeyError:
            known = ", ".join(self.backends) or "none"
            broken = [p.name for p in self.info if p.error]
            extra = f" Broken plugins (see `portaft plugins`): {', '.join(broken)}." if broken else ""
            raise UserError(f"unknown backend {name!r}. Known backends: {known}.{extra}") from None

    def select_backend(self, name: str, device: str = "auto") -> Any:
        """`auto` = the available backend with the highest priority; a name must be available.

        With device `cpu` the backend's hardware is not needed: its library code runs on
        the CPU (`auto` is then the cpu backend)."""
        if device == "cpu":
            return self.get_backend("cpu" if name == "auto" else name)
        if name == "auto":
            for backend in self.backends.values():
                if backend.is_available():
                    return backend
            raise BackendUnavailable("no backend is available here; run `portaft backends` to see why each is not.")
        backend = self.get_backend(name)
        if not backend.is_available():
            raise BackendUnavailable(
                f"backend {name!r} is not available: {backend.unavailable_reason()}. "
                f"portaft does not fall back to another device; choose one that `portaft backends` lists as available."
            )
        return backend

    def describe_backends(self) -> list[dict[str, Any]]:
        rows = []
        for backend in self.backends.values():
            available = bool(backend.is_available())
            rows.append({
                "name": backend.name,
                "available": available,
                "reason": None if available else backend.unavailable_reason(),
                "priority": backend.priority,
                "device_type": backend.device_type,
                "distribution": self._provider(backend),
            })
        return rows

    # --- templates ---------------------------------------------------------------------

    @property
    def templates(self) -> dict[str, str]:
        if self._templates is None:
            found: dict[str, str] = {}

            def register(name: str, chat_template: str) -> None:
                if name in found:
                    self.problems.append(f"template {name!r} registered twice; the first one is kept.")
                else:
                    found[name] = chat_template

            self.manager.hook.register_templates(register=register)
            self._templates = found
        return self._templates

    # --- data formats -------------------------------------------------------------------

    @property
    def formats(self) -> dict[str, Any]:
        """Formats by name (`portaft.data.formats.Format`), in registration order: the
        order auto-detection tries them."""
        if self._formats is None:
            from .data.formats import Format

            found: dict[str, Any] = {}

            def register(name: str, to_messages: Any, keys: tuple = ()) -> None:
                if name in found:
                    self.problems.append(f"format {name!r} registered twice; the first one is kept.")
                else:
                    found[name] = Format(name, to_messages, tuple(keys))

            impls = self.manager.hook.register_formats.get_hookimpls()  # pluggy calls the last registered first,
            for impl in impls:  # so call them in registration order: built-ins are tried first when detecting
                impl.function(register=register)
            self._formats = found
        return self._formats

    # --- training callbacks ------------------------------------------------------------

    def callbacks(self, recipe: Any) -> list[TrainingCallback]:
        """What plugins register for a run of this (effective) recipe, in plugin
        registration order. Not cached: each run asks anew. A second callback serving a
        report_to name that another already serves is refused, so nothing logs twice."""
        found: list[TrainingCallback] = []
        for impl in self.manager.hook.register_callbacks.get_hookimpls():  # registration order, as for formats

            def register(callback: Any, report_to: str | None = None, note: str | None = None,
                         plugin: str = impl.plugin_name) -> None:
                taken = next((c for c in found if report_to and c.report_to == report_to), None)
                if taken is not None:
                    self.problems.append(f"plugin {plugin!r}'s callback for report_to {report_to!r} was refused: "
                                         f"plugin {taken.plugin!r} already serves that name.")
                else:
                    found.append(TrainingCallback(callback, plugin, report_to, note))

            given = {"register": register, "recipe": recipe}
            impl.function(**{name: given[name] for name in impl.argnames})  # an implementation may take fewer
        return found


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    allowed = os.environ.get("PORTAFT_LOAD_PLUGINS")
    eps = sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
    if allowed is None:
        return list(eps)
    names = {n.strip() for n in allowed.split(",") if n.strip()} | {CORE_DISTRIBUTION}
    return [ep for ep in eps if ep.dist is not None and ep.dist.name in names]


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _current
    if _current is None:
        _current = Plugins()
    return _current


def reset_plugins() -> None:
    """Forget loaded plugins, so the next get_plugins() reads entry points again."""
    global _current
    _current = None


def backend_names() -> list[str]:
    return list(get_plugins().backends)


def template_names() -> list[str]:
    return list(get_plugins().templates)


def format_names() -> list[str]:
    return list(get_plugins().formats)


def get_backend(name: str) -> Any:
    return get_plugins().get_backend(name)


def training_callbacks(recipe: Any) -> list[TrainingCallback]:
    """The callbacks plugins register for a run of `recipe`; the runner adds each
    `.callback` to its Trainer (portaft.tracking.prepare calls this)."""
    return get_plugins().callbacks(recipe)


def choose_backend(recipe: Any, explicit: str | None = None) -> Any:
    """Explicit argument > recipe `backend:` > $PORTAFT_BACKEND > auto."""
    if explicit:
        name = explicit
    elif recipe.backend != "auto":
        name = recipe.backend
    else:
        name = os.environ.get("PORTAFT_BACKEND") or "auto"
    return get_plugins().select_backend(name, getattr(recipe, "device", "auto"))
