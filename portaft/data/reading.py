"""Reading a recipe's sources (each file with its format) and what the data step and
`portaft validate` share: the per-source report, the tokenizer's pad token, the model type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portaft.plugins import Format
from portaft.recipe import Recipe

from .columns import source_format
from .formats import BadSample, detect_format
from .kinds import KindError, record_kind
from .problems import Problem
from .sources import read_file, source_files


@dataclass
class SourceReport:
    path: str
    format: str
    files: int
    records: int  # records read (good or bad)
    bad: int  # records skipped as bad (skip_bad_samples)
    dropped: int  # good records with no trained token left after truncation
    truncated: int  # cut at max_length (the rest of the sample is lost)
    truncated_in_prompt: int  # of which the cut fell in a prompt: the reply after it is lost
    available: int  # usable samples
    samples: int  # samples used after weight/samples
    tokens: int  # tokens of the used samples
    trained_tokens: int  # of which carry a label
    pretraining: int = 0  # usable records that are pretraining text (no template, every token trained)
    held_out: int = 0  # samples kept for evaluation (val_size), never trained on


def prepare_tokenizer(tokenizer: Any) -> list[str]:
    """Give the tokenizer a pad token if it lacks one (pad = eos, as the seeds do)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        return [f"tokenizer pad token: none -> eos ({tokenizer.eos_token!r}); padding is masked from the loss"]
    return []


def read_source(source: Any, formats: dict[str, Format], problems: list[Problem], unusable: list[str],
                 notes: list[str]):
    """(file, format) for every readable, non-empty file of a source; unreadable lines are
    appended to `problems`, files that cannot be used at all to `unusable`, how a file
    was read to `notes`."""
    mapped = source_format(source)
    for path in source_files(source.path):
        file = read_file(path)
        problems += file.bad_lines
        notes += file.notes
        if file.rows is None and file.bad_lines:
            continue  # every line is bad: each is already listed
        if file.rows is None or len(file.rows) == 0:
            unusable.append(f"{path}: holds no samples. Add data or remove it from `data:`.")
            continue
        if mapped is not None:
            yield file, mapped
            continue
        name = source.format
        if name == "auto":
            name = detect_format(file.first_record(), formats)
            if name is None and _kind_of(file.first_record()):
                yield file, _UNKNOWN  # each record is refused (or skipped) naming its kind
                continue
            if name is None:
                unusable.append(
                    f"{file.where(0)}: cannot tell the data format from the record's keys "
                    f"({', '.join(file.first_record())}). Formats and their keys: "
                    + "; ".join(f"{f.name} ({', '.join(f.keys)})" for f in formats.values())
                    + ". Set `format:` or fix the data."
                )
                continue
        yield file, formats[name]


def _kind_of(record: dict) -> bool:
    try:
        record_kind(record)
        return False
    except KindError:
        return True


def _unknown(record: dict):
    raise BadSample(f"cannot tell the data format from the record's keys ({', '.join(record)}).", "unknown format")


_UNKNOWN = Format("unknown", _unknown, ())


def model_type(recipe: Recipe) -> str | None:
    """config.json's model_type, for template: auto; None when there is no readable config."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(recipe.model.name_or_path,
                                          trust_remote_code=recipe.model.trust_remote_code).model_type
    except Exception:  # a missing or remote config only means no guess
        return None
