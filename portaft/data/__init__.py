"""The data step: read every source, normalise, render with the chat template, mask, truncate.

    dataset = portaft.data.load("examples/self_identity.yaml")
    dataset[0]  # {"input_ids": [...], "attention_mask": [...], "labels": [...]}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from portaft.errors import UserError
from portaft.recipe import Recipe, RecipeSource, load_recipe

from .collator import Seq2SeqCollator
from .formats import FORMATS, detect_format, read_source
from .templates import choose_template, encode

__all__ = ["Seq2SeqCollator", "SourceReport", "build", "load", "prepare_tokenizer"]


@dataclass
class SourceReport:
    path: str
    format: str
    samples: int  # samples kept for training
    tokens: int  # tokens of the kept samples (after truncation)
    trained_tokens: int  # of which carry a label (assistant replies)
    truncated: int  # samples cut at max_length
    dropped: int  # samples with no trained token left after truncation


def prepare_tokenizer(tokenizer: Any) -> list[str]:
    """Give the tokenizer a pad token if it lacks one (pad = eos, as the seeds do)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        return [f"tokenizer pad token: none -> eos ({tokenizer.eos_token!r}); padding is masked from the loss"]
    return []


def build(recipe: Recipe, tokenizer: Any, templates: dict[str, str]) -> tuple[Any, list[SourceReport], tuple[str, str]]:
    """(encoded dataset, one report per source, (template name, template source))."""
    from datasets import concatenate_datasets

    template = choose_template(recipe.template, tokenizer, templates)
    parts, reports = [], []
    for source in recipe.data:
        raw = read_source(source.path)
        if len(raw) == 0:
            raise UserError(f"{source.path}: the file holds no samples. Add data or remove it from `data:`.")
        fmt = detect_format(raw[0], source.path) if source.format == "auto" else source.format
        to_messages = FORMATS[fmt]

        def encode_row(record: dict, index: int, path: str = source.path) -> dict:
            messages = to_messages(record, f"{path}: sample {index + 1}")
            return encode(tokenizer, template[1], messages, recipe.max_length)

        encoded = raw.map(encode_row, with_indices=True, remove_columns=raw.column_names, keep_in_memory=True,
                          desc=f"Encoding {source.path}")
        kept = encoded.filter(lambda row: any(label != -100 for label in row["labels"]), keep_in_memory=True)
        reports.append(SourceReport(
            path=source.path,
            format=fmt,
            samples=len(kept),
            tokens=sum(len(ids) for ids in kept["input_ids"]),
            trained_tokens=sum(sum(label != -100 for label in labels) for labels in kept["labels"]),
            truncated=sum(encoded["truncated"]),
            dropped=len(encoded) - len(kept),
        ))
        parts.append(kept.remove_columns("truncated"))
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(dataset) == 0:
        raise UserError("no sample has any assistant token left to train on; raise max_length or check the data.")
    return dataset, reports, template


def load(recipe: RecipeSource, tokenizer: Any = None) -> Any:
    """The encoded dataset exactly as training sees it (input_ids, attention_mask, labels)."""
    from portaft.plugins import choose_backend, get_plugins

    recipe = load_recipe(recipe)
    if tokenizer is None:
        tokenizer = choose_backend(recipe).load_tokenizer(recipe)
        prepare_tokenizer(tokenizer)
    dataset, _, _ = build(recipe, tokenizer, get_plugins().templates)
    return dataset


def report_rows(reports: list[SourceReport]) -> list[dict]:
    return [asdict(r) for r in reports]
