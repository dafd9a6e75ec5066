"""The recipe: one YAML file that says what to fine-tune, on what data, how.

`load_recipe` reads a path, dict or Recipe, applies `a.b=c` overrides and validates
everything at once: every problem is reported together, each with its YAML path
and (for files) its line.
"""

from __future__ import annotations

import copy
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .errors import RecipeError, UserError
from .yamlpaths import format_path, load_yaml_with_lines, nearest_line


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name_or_path: str = Field(description="Local folder or hub id of the base model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype when loaded; auto = the backend's choice for its hardware."
    )
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="Attention kernels; auto = transformers' default. Backends map what they lack."
    )


class DataSource(_Section):
    path: str = Field(description="A .json/.jsonl/.parquet/.csv file, a folder of them, or a glob.")
    format: str = Field(
        "auto", description="auto = detect from the records' keys; or xtuner, alpaca, sharegpt, openai, a plugin's."
    )
    weight: float | None = Field(None, gt=0, description="Use round(weight x size) samples of this source.")
    samples: int | None = Field(None, gt=0, description="Use exactly this many samples of this source.")

    @model_validator(mode="after")
    def _one_amount(self) -> "DataSource":
        if self.weight is not None and self.samples is not None:
            raise ValueError("set either weight or samples for a source, not both")
        return self


class LoraSection(_Section):
    r: int = Field(8, gt=0, description="Rank: higher = more capacity, more memory.")
    alpha: float = Field(16, gt=0, description="Scale of the update is alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (peft), a little slower, often better.")


class ChatTurn(_Section):
    role: Literal["system", "user", "assistant"]
    content: str


class QuantizationSection(_Section):
    bits: Literal[4, 8] = Field(4, description="4 = QLoRA (NF4/FP4 weights), 8 = LLM.int8 weights.")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's.")
    double_quant: bool = Field(True, description="Also quantize the quantization constants (saves ~0.4 bit/weight).")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype the 4-bit matmuls compute in.")


class Recipe(_Section):
    backend: str = Field("auto", description="cpu, cuda, npu, a plugin's backend, or auto.")
    device: Literal["auto", "cpu"] = Field(
        "auto", description="auto: the backend's own hardware; cpu: the backend's library code on the CPU "
        "(e.g. the npu backend's openMind path on a machine without an NPU)."
    )
    model: ModelSection
    data: list[DataSource] = Field(min_length=1)
    template: str = Field(
        "auto", description="Chat template: auto, tokenizer (its own chat_template), or a registered name."
    )
    system: str | None = Field(None, description="System prompt for every conversation (replaces the data's).")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant", description="What the loss trains: every assistant reply, the last one, or all text."
    )
    max_length: int = Field(1024, gt=0, description="Samples longer than this are truncated (and counted).")
    packing: bool = Field(False, description="Padding-free batches filled to a token budget.")
    packing_tokens: int | None = Field(
        None, gt=0, description="Tokens per packed batch; default per_device_train_batch_size x mean sample length."
    )
    skip_bad_samples: bool = Field(False, description="Count and skip bad records instead of stopping.")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="lora: train an adapter (the lora section); full: update every weight of the model."
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    quantization: QuantizationSection | None = Field(
        None, description="Load the frozen base quantized through bitsandbytes (QLoRA); CUDA only."
    )
    train: dict[str, Any] = Field(description="transformers TrainingArguments, by their own names.")
    eval_prompts: list[str | list[ChatTurn]] = Field(
        default_factory=list, description="Questions answered greedily before and after training: a string, or a "
        "conversation (a list of {role, content} turns ending with the user's) for multi-turn behaviour."
    )
    eval_every: int | None = Field(
        None, gt=0, description="Also answer eval_prompts every this many optimizer steps while training."
    )
    resume: Literal["auto", True, False] = Field(
        "auto", description="auto: continue from the newest complete checkpoint in train.output_dir if there is "
        "one; true: insist on one; false: start from step 0 (a non-empty output_dir needs overwrite: true)."
    )
    overwrite: bool = Field(
        False, description="With resume: false, start over in a non-empty output_dir (its checkpoints are removed)."
    )

    @model_validator(mode="after")
    def _eval_every_needs_prompts(self) -> "Recipe":
        if self.eval_every is not None and not self.eval_prompts:
            raise ValueError("eval_every is set but eval_prompts is empty: add the questions to answer")
        return self

    @model_validator(mode="after")
    def _conversations_end_with_the_user(self) -> "Recipe":
        for index, prompt in enumerate(self.eval_prompts):
            if isinstance(prompt, list) and (not prompt or prompt[-1].role != "user"):
                raise ValueError(f"eval_prompts[{index}] is a conversation that does not end with a user turn: "
                                 "end it with the question to answer")
        return self

    @model_validator(mode="after")
    def _quantized_base_is_frozen(self) -> "Recipe":
        if self.quantization is not None and self.finetune == "full":
            raise ValueError("quantization is set with finetune: full, but quantized weights cannot be trained: "
                             "use finetune: lora (QLoRA) or remove quantization")
        return self


# --- the `train` section is checked against the installed TrainingArguments ----------

@functools.cache
def _training_arguments_schema() -> type[BaseModel]:
    import dataclasses

    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(TrainingArguments):
        if field.init:
            fields[field.name] = (hints[field.name] | None, None)
    fields["output_dir"] = (str, ...)  # required: portaft never picks a folder silently
    from .compat import RENAMED_TRAINING_ARGUMENTS

    for old, new in RENAMED_TRAINING_ARGUMENTS.items():  # the old name is accepted; resolve() renames it
        if old not in fields and new in fields:
            fields[old] = fields[new]
    return create_model(
        "TrainSection",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


# --- loading -----------------------------------------------------------------------

RecipeSource = typing.Union[str, Path, dict, Recipe]


def load_recipe(source: RecipeSource, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe; raise RecipeError listing every problem."""
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
    return validate(data, name, lines, overridden)


def validate(data: dict, name: str, lines: dict, overridden: dict[tuple, str] | None = None) -> Recipe:
    overridden = overridden or {}
    problems: list[tuple[tuple, str]] = []
    train_raw = data.get("train")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        recipe = None
        problems += [(tuple(err["loc"]), _describe(err, Recipe)) for err in exc.errors()]
    if isinstance(train_raw, dict):
        schema = _training_arguments_schema()
        try:
            train = schema.model_validate(train_raw).model_dump(exclude_unset=True)
            if recipe is not None:
                recipe.train = train
        except ValidationError as exc:
            recipe = None
            problems += [(("train",) + tuple(err["loc"]), _describe(err, schema)) for err in exc.errors()]
    problems += _check_references(data)
    if problems:
        raise RecipeError(name, [_locate(path, msg, name, lines, overridden) for path, msg in problems])
    return recipe


def _describe(err: dict, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        siblings = _field_names_at(model, tuple(err["loc"][:-1]))
        hint = difflib.get_close_matches(str(err["loc"][-1]), siblings, n=1)
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


def _check_references(data: dict) -> list[tuple[tuple, str]]:
    """Problems that need the plugin registries or the file system, not just types.

    Works on the raw mapping, so these are reported even when other keys fail validation."""
    from . import plugins
    from .data.sources import source_files

    problems = []
    backend, template = data.get("backend", "auto"), data.get("template", "auto")
    backends = plugins.backend_names()
    if isinstance(backend, str) and backend != "auto" and backend not in backends:
        problems.append((("backend",), f"unknown backend {backend!r}. Known: auto, {', '.join(backends)}."))
    templates = plugins.template_names()
    if isinstance(template, str) and template not in ("auto", "tokenizer", *templates):
        problems.append(
            (("template",), f"unknown template {template!r}. Choose auto, tokenizer, or one of: {', '.join(templates)}.")
        )
    formats = plugins.format_names()
    sources = data.get("data") if isinstance(data.get("data"), list) else []
    for index, source in enumerate(sources):
        if not isinstance(source, dict):
            continue
        fmt = source.get("format", "auto")
        if isinstance(fmt, str) and fmt not in ("auto", *formats):
            problems.append((("data", index, "format"),
                             f"unknown format {fmt!r}. Choose auto or one of: {', '.join(formats)}."))
        if isinstance(source.get("path"), str):
            try:
                source_files(source["path"])
            except UserError as exc:
                problems.append((("data", index, "path"), str(exc)))
    return problems


# --- overrides ------------------------------------------------------------------------

def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict[tuple, str]:
    """Apply `a.b=c` overrides in place; return {path: override text} for messages."""
    applied: dict[tuple, str] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise UserError(f"override `{text}`: write it as key.path=value, e.g. lora.r=16 or train.learning_rate=1e-4.")
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        value = _override_value(path, raw)
        _set_path(data, path, value, text)
        applied[path] = text
    return applied


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def _annotation_at(path: tuple) -> Any:
    """The schema's type annotation at a YAML path, or None where the schema has none."""
    model: Any = Recipe
    for depth, part in enumerate(path):
        if model is None or isinstance(part, int):
            continue
        if model is Recipe and part == "train":
            if depth + 1 != len(path) - 1:
                return None
            field = _training_arguments_schema().model_fields.get(path[-1])
            return field.annotation if field is not None else None
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        if depth == len(path) - 1:
            return field.annotation
        args = typing.get_args(annotation := field.annotation) or (annotation,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return None


def _union_members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _is_text(annotation: Any) -> bool:
    """Only a string fits here (str or Optional[str])."""
    return _union_members(annotation) == [str]


def _accepts_text(annotation: Any) -> bool:
    """A string is one of the things that fit (str in a union, a str enum, string literals)."""
    for member in _union_members(annotation):
        if member is str or (isinstance(member, type) and issubclass(member, str)):
            return True
        if typing.get_origin(member) is Literal and all(isinstance(v, str) for v in typing.get_args(member)):
            return True
    return False


def _override_value(path: tuple, raw: str) -> Any:
    """The value of `path=raw`: text where the schema wants text, else YAML, except that
    YAML 1.1's yes/no/on/off stay words where a word fits (train.save_strategy=no)."""
    annotation = _annotation_at(path)
    if annotation is not None and _is_text(annotation):
        return raw
    value = _parse_value(raw)
    if isinstance(value, bool) and raw.lower() not in ("true", "false") and annotation is not None \
            and _accepts_text(annotation):
        return raw
    return value


def _set_path(data: Any, path: tuple, value: Any, text: str) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise UserError(f"override `{text}`: {format_path(path[:depth])} has no item [{part}].")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise UserError(f"override `{text}`: {format_path(path[:depth])} is not a mapping.")
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise UserError(f"override `{text}`: {format_path(path[:-1])} has no item [{last}].")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"override `{text}`: {format_path(path[:-1])} is not a mapping.")


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every default spelled out (what `portaft_recipe.yaml` holds)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
