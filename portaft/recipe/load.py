"""Reading a recipe: a YAML path, a dict or a Recipe, with `a.b=c` overrides, validated at once.

Every problem is reported together, each with its YAML path and (for files) its line.
Names that only the installed plugins know (backends, templates, data formats) are
checked against the `Names` the caller passes: the recipe reaches no plugin state.
"""

from __future__ import annotations

import copy
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from portaft.errors import RecipeError, UserError

from .checks import combination_problems, surroundings_problems
from .overrides import apply_overrides
from .schema import Recipe, training_arguments_schema
from .yamlpaths import format_path, load_yaml_with_lines, nearest_line


@dataclass(frozen=True)
class Names:
    """What the installed plugins registered, for the names a recipe may use."""

    backends: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()


RecipeSource = typing.Union[str, Path, dict, Recipe]


def read_recipe(source: RecipeSource, overrides: typing.Sequence[str] = (), names: Names | None = None,
                surroundings: bool = False) -> Recipe:
    """Read and validate a recipe; raise RecipeError listing every problem. `names`: the
    backends, templates and formats a recipe may name (None: those names are not checked;
    `portaft.load_recipe` passes the installed plugins'). `surroundings`: also check that
    the model can be found and the output folder written (checks.surroundings_problems)."""
    lines: dict = {}
    if isinstance(source, Recipe):
        data, name = source.model_dump(), "recipe"
    elif isinstance(source, dict):
        data, name = copy.deepcopy(source), "recipe"
    else:
        path = Path(source)
        data, lines = load_yaml_with_lines(path)
        name = str(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{name}: a recipe is a YAML mapping (model:, data:, train: ...), not a {type(data).__name__}.")
    overridden = apply_overrides(data, overrides)
    return validate(data, name, lines, overridden, names, surroundings)


def validate(data: dict, name: str, lines: dict, overridden: dict[tuple, str] | None = None,
             names: Names | None = None, surroundings: bool = False) -> Recipe:
    overridden = overridden or {}
    problems: list[tuple[tuple, str]] = []
    train_raw = data.get("train")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        recipe = None
        problems += [(tuple(err["loc"]), _describe(err, Recipe)) for err in exc.errors()]
    if isinstance(train_raw, dict):
        schema = training_arguments_schema()
        try:
            train = _keep_ints(schema.model_validate(train_raw).model_dump(exclude_unset=True), train_raw)
            if recipe is not None:
                recipe.train = train
        except ValidationError as exc:
            recipe = None
            problems += [(("train",) + tuple(err["loc"]), _describe(err, schema)) for err in exc.errors()]
        else:
            problems += _check_train_ranges(train)
    problems += _check_files(data) + combination_problems(data)
    if surroundings:
        problems += surroundings_problems(data)
    if names is not None:
        problems += _check_names(data, names)
    if problems:
        raise RecipeError(name, [_locate(path, msg, name, lines, overridden) for path, msg in problems])
    return recipe


def _keep_ints(train: dict, written: dict) -> dict:
    """TrainingArguments types num_train_epochs, logging_steps... as float: a whole number
    written as one stays one (`30`, not `30.0`) in the effective recipe and the report."""
    for key, value in written.items():
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(train.get(key), float) \
                and train[key] == value:
            train[key] = value
    return train


# Keys people bring from LLaMA-Factory / PEFT recipes, too unlike portaft's for a spelling
# match (rank -> r is one letter against four): their portaft name, at the same place.
ALIASES = {"rank": "r", "lora_rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "lora_target": "target_modules", "lr": "learning_rate", "epochs": "num_train_epochs",
           "batch_size": "per_device_train_batch_size", "cutoff_len": "max_length", "model_name_or_path": "name_or_path"}


def _describe(err: dict, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        siblings = _field_names_at(model, tuple(err["loc"][:-1]))
        key = str(err["loc"][-1])
        hint = [ALIASES[key]] if ALIASES.get(key) in siblings else difflib.get_close_matches(key, siblings, n=1)
        suggestion = f" Did you mean `{hint[0]}`?" if hint else ""
        return f"unknown key.{suggestion} Remove it or fix its spelling."
    if err["type"] == "missing":
        return "required, but missing. Add it."
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{err['msg']}{shown}."


def _field_names_at(model: type[BaseModel], path: tuple) -> list[str]:
    for part in path:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        inner = [a for a in typing.get_args(annotation) or (annotation,) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        model = inner[0]
    return list(model.model_fields)


def _locate(path: tuple, message: str, name: str, lines: dict, overridden: dict[tuple, str]) -> str:
    for end in range(len(path), 0, -1):
        if path[:end] in overridden:
            return f"{format_path(path)}: {message} (from the override `{overridden[path[:end]]}`)"
    line = nearest_line(lines, path)
    where = f"{name}:{line}" if line else name
    return f"{where}: {format_path(path)}: {message}"


# train: values TrainingArguments accepts but that train nothing, or fail later: (key, is it out of range, what it must be)
TRAIN_RANGES = (
    ("num_train_epochs", lambda v: v <= 0, "more than 0"),
    ("max_steps", lambda v: v == 0 or v < -1, "a number of steps above 0, or -1 (train num_train_epochs)"),
    ("learning_rate", lambda v: v <= 0, "more than 0"),
    ("per_device_train_batch_size", lambda v: v < 1, "1 or more"),
    ("gradient_accumulation_steps", lambda v: v < 1, "1 or more"),
    ("warmup_ratio", lambda v: not 0 <= v < 1, "0 or more and below 1 (a fraction of the steps)"),
    ("warmup_steps", lambda v: v < 0, "0 or more"),
    ("logging_steps", lambda v: v <= 0, "more than 0"),
    ("save_steps", lambda v: v <= 0, "more than 0"),
)


def _check_train_ranges(train: dict) -> list[tuple[tuple, str]]:
    return [(("train", key), f"{train[key]:g} trains nothing or stops the run: give {allowed}.")
            for key, out_of_range, allowed in TRAIN_RANGES
            if isinstance(train.get(key), (int, float)) and not isinstance(train[key], bool) and out_of_range(train[key])]


def _check_names(data: dict, names: Names) -> list[tuple[tuple, str]]:
    """Backend, template and format names the installed plugins do not know. Works on the
    raw mapping, so these are reported even when other keys fail validation."""
    problems = []
    backend, template = data.get("backend", "auto"), data.get("template", "auto")
    if isinstance(backend, str) and backend != "auto" and backend not in names.backends:
        problems.append((("backend",), f"unknown backend {backend!r}. Known: auto, {', '.join(names.backends)}."))
    if isinstance(template, str) and template not in ("auto", "tokenizer", *names.templates):
        problems.append((("template",), f"unknown template {template!r}. Choose auto, tokenizer, or one of: "
                                         f"{', '.join(names.templates)}."))
    for index, source in _sources(data):
        fmt = source.get("format", "auto")
        if isinstance(fmt, str) and fmt not in ("auto", *names.formats):
            problems.append((("data", index, "format"),
                             f"unknown format {fmt!r}. Choose auto or one of: {', '.join(names.formats)}."))
    return problems


def _check_files(data: dict) -> list[tuple[tuple, str]]:
    """Data paths that match no file."""
    from portaft.data.sources import source_files

    problems = []
    for index, source in _sources(data):
        if isinstance(source.get("path"), str):
            try:
                source_files(source["path"])
            except UserError as exc:
                problems.append((("data", index, "path"), str(exc)))
    return problems


def _sources(data: dict) -> list[tuple[int, dict]]:
    sources = data.get("data") if isinstance(data.get("data"), list) else []
    return [(index, source) for index, source in enumerate(sources) if isinstance(source, dict)]


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every default spelled out (what `portaft_recipe.yaml` holds)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
