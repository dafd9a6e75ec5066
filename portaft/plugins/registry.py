"""What plugins register: backends, chat templates, data formats, training callbacks, speed-ups.

Every hook implementation is called on its own, so one that raises marks its plugin
broken (with the error, for `portaft plugins`) and the others' registrations stand. A
backend is accepted only once each member the core calls has been read without an error:
one that lacks a member, or whose member raises when read (a property that raises, a
`__getattr__` that recurses), is refused with the reason. portaft's own backends are
accepted first, so a plugin backend that delegates lazily to `portaft.get_backend("cpu")`
finds it even while the others are still being read.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import pluggy

from portaft.errors import BackendUnavailable, UserError, first_line
from portaft.protocols import BACKEND_MEMBERS
from portaft.recipe import Names, Recipe, RecipeSource, read_recipe

from . import hookspecs
from . import loading
from .loading import CORE_DISTRIBUTION, GROUP, PluginInfo


class Format(NamedTuple):
    """A data format a plugin registered (register_formats)."""

    name: str
    to_messages: Callable[[dict], list[dict[str, str]]]
    keys: tuple[str, ...]  # auto-detection picks this format when a record has all these keys


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
        self.problems: list[str] = []  # registered objects that were refused
        self._backends: dict[str, Any] | None = None
        self._templates: dict[str, str] | None = None
        self._formats: dict[str, Format] | None = None
        self._distributions: dict[str, list[str]] | None = None
        found = entry_points if entry_points is not None else loading.entry_points()
        self.info: list[PluginInfo] = [loading.load(self.manager, ep) for ep in found]

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (a module or object with hookimpls)."""
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        self.info.append(PluginInfo(name, "(in process)", "", getattr(plugin, "__name__", repr(plugin)),
                                    sorted(h.name for h in self.manager.get_hookcallers(plugin) or [])))
        self._backends = self._templates = self._formats = None

    def broken(self) -> list[PluginInfo]:
        return [info for info in self.info if info.error]

    def _call(self, hook: str, register_for: Callable[[str], Callable[..., None]], **given: Any) -> None:
        """Each implementation of `hook` on its own, in registration order (built-ins first),
        given `register_for(its plugin's name)` as `register`; one that raises marks its
        plugin broken and leaves the others alone."""
        for impl in getattr(self.manager.hook, hook).get_hookimpls():  # pluggy lists them in registration order
            given["register"] = register_for(impl.plugin_name)
            try:
                impl.function(**{name: given[name] for name in impl.argnames})  # an implementation may take fewer
            except Exception as exc:  # noqa: BLE001 (a plugin's failure is reported, never fatal to the others)
                self._mark_broken(impl.plugin_name, f"its {hook} hook raised {type(exc).__name__}: {exc}")

    def _mark_broken(self, plugin: str, error: str) -> None:
        info = next((i for i in self.info if i.name == plugin), None)
        if info is None:
            self.info.append(info := PluginInfo(plugin, "?", "?", "?"))
        info.error = error if info.error is None else f"{info.error}; {error}"

    def _provider(self, backend: Any) -> str:
        """The distribution that ships the backend's module (e.g. 'portaft')."""
        top = type(backend).__module__.split(".")[0]  # type(): never the backend's own __getattr__
        if top == "portaft":  # its own backends: no scan (1.6 s a Plugins on the H100 machine's Python)
            return "portaft"
        if self._distributions is None:  # scans every installed package: once per Plugins
            self._distributions = importlib.metadata.packages_distributions()
        dists = self._distributions.get(top)
        return dists[0] if dists else top

    # --- backends ----------------------------------------------------------------------

    @property
    def backends(self) -> dict[str, Any]:
        """Backends by name, highest priority first. On a name clash portaft's own backend
        wins, else the plugin registered first; the loser is reported."""
        if self._backends is None:
            offered: list[tuple[str, Any]] = []
            self._call("register_backends", lambda plugin: lambda backend: offered.append((plugin, backend)))
            offered.sort(key=lambda item: self._provider(item[1]) != CORE_DISTRIBUTION)  # stable: built-ins first
            self._backends = {}  # filled as each is accepted: a member that asks for a built-in finds it
            for plugin, backend in offered:
                name, problem = self._accept(backend)
                if problem:
                    self.problems.append(f"backend {name!r} from {self._provider(backend)} (plugin {plugin!r}) was "
                                         f"refused: {problem}")
                else:
                    self._backends[name] = backend
            self._backends = dict(sorted(self._backends.items(), key=lambda kv: -kv[1].priority))
        return self._backends

    def _accept(self, backend: Any) -> tuple[str, str | None]:
        """(its name, why it is refused or None): every member read once, none may raise."""
        missing = []
        for member in BACKEND_MEMBERS:
            try:
                getattr(backend, member)
            except AttributeError:
                missing.append(member)
            except Exception as exc:  # noqa: BLE001 (RecursionError included: a __getattr__ that loops)
                return _name_of(backend), f"reading its `{member}` raised {type(exc).__name__}: {first_line(exc)}"
        name = _name_of(backend)
        if missing:
            return name, f"it lacks {', '.join(missing)}."
        if not isinstance(backend.priority, (int, float)):
            return name, f"its priority is {backend.priority!r}, not a number."
        if name in self._backends:
            return name, f"{self._provider(self._backends[name])} already registers that name."
        return name, None

    def get_backend(self, name: str) -> Any:
        """The backend called `name`, available or not; UserError if none has that name."""
        try:
            return self.backends[name]
        except KeyError:
            known = ", ".join(self.backends) or "none"
            broken = [p.name for p in self.broken()]
            extra = f" Broken plugins (see `portaft plugins`): {', '.join(broken)}." if broken else ""
            raise UserError(f"unknown backend {name!r}. Known backends: {known}.{extra}") from None

    def unavailable_reason(self, backend: Any) -> str | None:
        """Why `backend` cannot run here, None when it can; a check that raises is a reason too."""
        try:
            if backend.is_available():
                return None
            return backend.unavailable_reason() or "it says it is not available, without a reason"
        except Exception as exc:  # noqa: BLE001 (a plugin's broken check must not stop the other backends)
            return f"its availability check raised {type(exc).__name__}: {first_line(exc)}"

    def select_backend(self, name: str, device: str = "auto") -> Any:
        """`auto` = the available backend with the highest priority; a name must be available.

        With device `cpu` the backend's hardware is not needed: its library code runs on
        the CPU (`auto` is then the cpu backend)."""
        if device == "cpu":
            return self.get_backend("cpu" if name == "auto" else name)
        if name == "auto":
            for backend in self.backends.values():
                if self.unavailable_reason(backend) is None:
                    return backend
            raise BackendUnavailable("no backend is available here; run `portaft backends` to see why each is not.")
        backend = self.get_backend(name)
        reason = self.unavailable_reason(backend)
        if reason is not None:
            raise BackendUnavailable(
                f"backend {name!r} is not available: {reason}. "
                f"portaft does not fall back to another device; choose one that `portaft backends` lists as available."
            )
        return backend

    def choose_backend(self, recipe: Recipe, explicit: str | None = None) -> Any:
        """Explicit argument > recipe `backend:` > $PORTAFT_BACKEND > auto."""
        if explicit:
            name = explicit
        elif recipe.backend != "auto":
            name = recipe.backend
        else:
            name = os.environ.get("PORTAFT_BACKEND") or "auto"
        return self.select_backend(name, recipe.device)

    def describe_backends(self) -> list[dict[str, Any]]:
        rows = []
        for backend in self.backends.values():
            reason = self.unavailable_reason(backend)
            rows.append({"name": backend.name, "available": reason is None, "reason": reason,
                         "priority": backend.priority, "device_type": backend.device_type,
                         "distribution": self._provider(backend)})
        return rows

    # --- templates and data formats --------------------------------------------------------

    @property
    def templates(self) -> dict[str, str]:
        if self._templates is None:
            found: dict[str, str] = {}

            def register(name: str, chat_template: str) -> None:
                if name in found:
                    self.problems.append(f"template {name!r} registered twice; the first one is kept.")
                else:
                    found[name] = chat_template

            self._call("register_templates", lambda plugin: register)
            self._templates = found
        return self._templates

    @property
    def formats(self) -> dict[str, Format]:
        """Formats by name, in registration order: the order auto-detection tries them
        (built-ins first)."""
        if self._formats is None:
            found: dict[str, Format] = {}

            def register(name: str, to_messages: Any, keys: tuple = ()) -> None:
                if name in found:
                    self.problems.append(f"format {name!r} registered twice; the first one is kept.")
                else:
                    found[name] = Format(name, to_messages, tuple(keys))

            self._call("register_formats", lambda plugin: register)
            self._formats = found
        return self._formats

    def names(self) -> Names:
        """The backend, template and format names a recipe may use here."""
        return Names(tuple(self.backends), tuple(self.templates), tuple(self.formats))

    def read_recipe(self, source: RecipeSource, overrides: Sequence[str] = (), surroundings: bool = False) -> Recipe:
        """The recipe read and validated, its names checked against these plugins'
        (`surroundings`: the model and output folder too, as `portaft validate` and `run` do)."""
        return read_recipe(source, overrides, self.names(), surroundings)

    # --- per run: training callbacks and speed-ups ---------------------------------------------

    def callbacks(self, recipe: Recipe) -> list[TrainingCallback]:
        """What plugins register for a run of this (effective) recipe, in plugin
        registration order. Not cached: each run asks anew. A second callback serving a
        report_to name that another already serves is refused, so nothing logs twice."""
        found: list[TrainingCallback] = []

        def register_for(plugin: str) -> Callable[..., None]:
            def register(callback: Any, report_to: str | None = None, note: str | None = None) -> None:
                taken = next((c for c in found if report_to and c.report_to == report_to), None)
                if taken is not None:
                    self.problems.append(f"plugin {plugin!r}'s callback for report_to {report_to!r} was refused: "
                                         f"plugin {taken.plugin!r} already serves that name.")
                else:
                    found.append(TrainingCallback(callback, plugin, report_to, note))
            return register

        self._call("register_callbacks", register_for, recipe=recipe)
        return found

    def speed_ups(self, backend: Any) -> list[Any]:
        """The speed-ups plugins offer for a run on `backend` (register_speed_ups)."""
        offered: list[Any] = []
        self._call("register_speed_ups", lambda plugin: offered.append, backend=backend)
        return offered


def _name_of(backend: Any) -> str:
    try:
        return str(backend.name)
    except Exception:  # noqa: BLE001 (the name itself may be what raises)
        return f"<a {type(backend).__name__}>"




# --- the process-wide set: what commands and `portaft.run` use -------------------------------

_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The plugins installed in this environment, loaded on first use."""
    global _current
    if _current is None:
        plugins = Plugins()
        if not any(info.distribution == CORE_DISTRIBUTION for info in plugins.info):
            raise UserError("portaft's own backends, templates and formats were not found: they come through the "
                            "entry points of the installed portaft package, and this Python has none (portaft is "
                            "imported from a folder on its path, not installed). Install it: pip install -e . in "
                            "the repository, or pip install portaft.")
        _current = plugins
    return _current


def reset_plugins() -> None:
    """Forget loaded plugins, so the next get_plugins() reads entry points again."""
    global _current
    _current = None


def get_backend(name: str) -> Any:
    """The installed backend called `name` (`portaft.get_backend`)."""
    return get_plugins().get_backend(name)


def load_recipe(source: RecipeSource, overrides: Sequence[str] = ()) -> Recipe:
    """A recipe read and validated at once (`portaft.load_recipe`): its backend, template
    and format names checked against the installed plugins'."""
    return get_plugins().read_recipe(source, overrides)
