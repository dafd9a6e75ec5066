"""`train.report_to`: the experiment trackers a run logs to, made explicit and checked
before any model is loaded.

transformers knows a fixed set of trackers (`INTEGRATION_TO_CALLBACK` in its
`integrations.integration_utils`, which differs between versions); plugins serve more,
or replace one, through the `register_callbacks` hook. Unset means `none` on every
transformers version: 4.x defaulted to `all`, every installed tracker, which surprises
and can stop a run at a wandb login prompt.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from portaft.errors import UserError

# What to pip install where it is not the report_to name itself.
PIP_NAMES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "dagshub": "dagshub mlflow",
             "flyte": "flytekit flytekitplugins-deck-standard"}
# transformers' availability checks not named is_<name>_available.
AVAILABILITY_CHECKS = {"azure_ml": "is_azureml_available", "comet_ml": "is_comet_available",
                       "flyte": "is_flytekit_available"}
# Trackers a portaft plugin serves better than transformers does (or at all).
PLUGIN_FOR = {"swanlab": "portaft-swanlab"}


@dataclass
class Tracking:
    """What the runner needs: TrainingArguments' report_to, callbacks to add, notes."""

    report_to: str | list[str]  # the names transformers handles itself ("none" when there are none)
    callbacks: list[Any] = field(default_factory=list)  # for trainer.add_callback
    notes: list[str] = field(default_factory=list)


def prepare(recipe: Any, plugins: Any) -> Tracking:
    """Make `train.report_to` explicit in the effective recipe (changed in place), ask
    `plugins` (portaft.plugins.Plugins) for their callbacks, and check every name; one
    UserError lists what is wrong."""
    notes = explicit_report_to(recipe.train)
    known_problems, known_broken = len(plugins.problems), {p.name: p.error for p in plugins.broken()}
    registered = plugins.callbacks(recipe)
    notes += [f"warning: {p}" for p in plugins.problems[known_problems:]]
    notes += [f"warning: plugin {p.name!r} is broken: {p.error}" for p in plugins.broken()
              if known_broken.get(p.name) != p.error]
    served = {c.report_to for c in registered if c.report_to}
    check_report_to(recipe.train, served)
    notes += [c.note for c in registered if c.note]
    left = [name for name in report_to_names(recipe.train) if name not in served]
    return Tracking(left or "none", [c.callback for c in registered], notes)


def report_to_names(train: dict) -> list[str]:
    """The tracker names in `train.report_to` (unset and "none": no names)."""
    value = train.get("report_to")
    names = [] if value is None else [value] if isinstance(value, str) else list(value)
    return [name for name in names if name != "none"]


def explicit_report_to(train: dict) -> list[str]:
    """Unset -> "none", "all" -> the trackers installed here; a note when that changes
    what transformers would have done."""
    from transformers import TrainingArguments
    from transformers.integrations import integration_utils

    value = train.get("report_to")
    installed = integration_utils.get_available_reporting_integrations  # imports each installed tracker: call late
    if value is None:
        train["report_to"] = "none"
        default = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}["report_to"]
        would = installed() if default in (None, "all") else []  # transformers 4.x: unset meant "all"
        if not would:
            return []
        return [(f"train.report_to: unset -> none (transformers {_version()} would report to every installed tracker: "
                 f"{', '.join(would)}; name the ones you want in train.report_to)")]
    if value in ("all", ["all"]):
        found = installed()
        train["report_to"] = found or "none"
        return [f"train.report_to: all -> {', '.join(found) or 'none'} (the trackers installed here)"]
    return []


def check_report_to(train: dict, served: Collection[str] = ()) -> None:
    """Every name in `train.report_to` is served by a plugin, or is a tracker transformers
    knows and that is installed here. Raises one UserError listing every problem."""
    from transformers.integrations import integration_utils

    known = integration_utils.INTEGRATION_TO_CALLBACK
    value = train.get("report_to")
    listed = [value] if isinstance(value, str) else list(value or [])
    names = report_to_names(train)
    problems = []
    if len(listed) > 1 and {"all", "none"} & set(listed):
        problems.append("`all` and `none` stand alone; give them as the whole value, or list tracker names.")
    for name in names:
        if name in served or name == "all":
            continue
        if name not in known:
            problems.append(_unknown(name, known, served))
        elif not _available(name, integration_utils):
            problems.append(_not_installed(name))
        elif name == "swanlab" and _builtin_swanlab_fails():
            problems.append(
                f"transformers {_version()}'s own SwanLab integration cannot start a run with swanlab "
                f"{importlib.metadata.version('swanlab')} (it calls swanlab.get_run(), which raises since swanlab "
                f"0.9). {_plugin_hint(name)}")
    if problems:
        raise UserError("\n".join(f"train.report_to: {p}" for p in problems))


def _unknown(name: str, known: Collection[str], served: Collection[str]) -> str:
    if name in PLUGIN_FOR:
        return f"transformers {_version()} has no {name} integration. {_plugin_hint(name)}"
    choices = sorted({*known, *served})
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return (f"{name!r} is not a tracker transformers {_version()} or a plugin knows.{hint} "
            f"Known: {', '.join(choices)}; or all, or none.")


def _not_installed(name: str) -> str:
    if name == "kubeflow":
        return "kubeflow reports only inside a Kubeflow TrainJob (KUBEFLOW_TRAINER_SERVER_URL is not set here)."
    package = PIP_NAMES.get(name, name)
    extra = " (or portaft[track])" if set(package.split()) <= _track_extra() else ""
    plugin = f" {_plugin_hint(name)}" if name in PLUGIN_FOR else ""
    return f"{name} is not installed. pip install {package}{extra}{plugin}"


def _plugin_hint(name: str) -> str:
    plugin = PLUGIN_FOR[name]
    return (f"The {plugin} plugin serves it on every transformers version: pip install ./plugins/{plugin} "
            "(a folder of portaft's repository).")


def _available(name: str, integration_utils: Any) -> bool:
    check = getattr(integration_utils, AVAILABILITY_CHECKS.get(name, f"is_{name}_available"), None)
    return bool(check()) if check is not None else True  # a check we do not know: transformers checks itself


def _builtin_swanlab_fails() -> bool:
    """transformers' SwanLabCallback asks `swanlab.get_run() is None`; swanlab 0.9+ raises instead."""
    import swanlab

    try:
        swanlab.get_run()
    except RuntimeError:
        return True
    return False


def _track_extra() -> set[str]:
    """The packages `pip install portaft[track]` adds, read from portaft's metadata."""
    from packaging.requirements import Requirement

    try:
        requirements = [Requirement(r) for r in importlib.metadata.requires("portaft") or []]
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {r.name for r in requirements
            if r.marker is not None and r.marker.evaluate({"extra": "track"}) and not r.marker.evaluate({"extra": ""})}


def _version() -> str:
    import transformers

    return transformers.__version__
