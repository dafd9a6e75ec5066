"""The data step: read every source, normalise, render with the chat template, mask, truncate, mix.

    dataset = portaft.data.load("examples/self_identity.yaml")
    dataset[0]  # {"input_ids": [...], "attention_mask": [...], "labels": [...]}

Modules: `sources` (files, reading, where a record came from), `formats` + `messages`
(records to conversations), `columns` (a source's column mapping), `kinds` (data portaft
does not train as chat: preference, KTO, multimodal; tools and reasoning a template
cannot render), `problems` (bad records, counted and listed), `templates` +
`chat_templates` (rendering, trained spans), `encode` (the batched tokenize-and-mask
pass), `validate` (`portaft validate`'s pass: the template checked as run checks it,
nothing encoded), `mixing`; how training draws batches: `collator` (padded), `packing`
(flattened, token-budget batches), `shares` (several processes' shares of a step).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from portaft.errors import UserError
from portaft.plugins import Plugins, get_plugins
from portaft.recipe import Recipe, RecipeSource

from .collator import Seq2SeqCollator
from .encode import CUT_IN_PROMPT, NOT_CUT, Encoder, EncodeSettings
from .formats import BadSample
from .kinds import KindError
from .mixing import mixed_rows
from .problems import SHOWN_PROBLEMS, Problem, problem_list, skipped_lines, write_skipped
from .reading import SourceReport, model_type, prepare_tokenizer, read_source
from .sources import progress_bars
from .splits import split_off, val_size_of
from .templates import checked_template
from .validate import check

__all__ = ["SHOWN_PROBLEMS", "BadSample", "Built", "KindError", "Problem", "Seq2SeqCollator", "SourceReport", "build",
           "check", "load", "prepare_tokenizer", "write_skipped"]

PARALLEL_FROM = 50_000  # records in a file from which encoding uses several processes
BAR_FROM = 5_000  # records in a file from which encoding shows a progress bar


@dataclass
class Built:
    dataset: Any  # datasets.Dataset: input_ids, attention_mask, labels
    lengths: list[int]  # tokens per row, for packing
    reports: list[SourceReport]
    template_name: str
    template: str  # Jinja source
    warnings: list[str] = field(default_factory=list)  # the count of skipped records and the first few
    skipped: list[Problem] = field(default_factory=list)  # every skipped record (skipped.jsonl)
    notes: list[str] = field(default_factory=list)  # how files were read, what the data is trained as
    eval_dataset: Any = None  # held out (val_size) and eval_data: sources' rows, or None
    eval_reports: list[SourceReport] = field(default_factory=list)  # one per eval_data: source


def build(recipe: Recipe, tokenizer: Any, plugins: Plugins) -> Built:
    """Every source encoded and mixed, with one report per source. Bad records raise one
    UserError listing them all, unless recipe.skip_bad_samples counts them instead; a
    file that cannot be used at all (empty, unknown format) always raises. `plugins`:
    where the named templates and data formats come from."""
    from datasets import concatenate_datasets

    template_name, template, _ = checked_template(recipe.template, tokenizer, plugins.templates, model_type(recipe))
    settings = EncodeSettings(template, recipe.max_length, recipe.train_on, recipe.system, template_name)
    seed = int(recipe.train.get("seed", 42))
    problems: list[Problem] = []  # bad records
    unusable: list[str] = []  # whole files
    notes: list[str] = []
    parts, lengths, reports = [], [], []
    held_parts, eval_reports = [], []
    sources = [(index, source, False) for index, source in enumerate(recipe.data)]
    sources += [(index, source, True) for index, source in enumerate(recipe.eval_data)]
    for index, source, for_eval in sources:
        encoded, names, records, located = [], [], 0, []
        for file, fmt in read_source(source, plugins.formats, problems, unusable, notes):
            with progress_bars(len(file.rows) >= BAR_FROM):
                rows = file.rows.map(
                    Encoder(tokenizer, fmt, settings), batched=True, remove_columns=file.rows.column_names,
                    num_proc=_processes(len(file.rows)), desc=f"Encoding {file.path}",
                )
            errors, reasons = _column(rows, "error"), _column(rows, "reason")
            located += [Problem(file.where(i), e, r) for i, (e, r) in enumerate(zip(errors, reasons)) if e]
            records += len(rows) + len(file.bad_lines)
            encoded.append(rows)
            names.append(fmt.name)
        problems += located
        if not encoded:
            continue
        rows = concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
        errors, trained, cuts, sizes, plain = (_column(rows, name) for name in ("error", "trained", "cut", "length",
                                                                                "pretraining"))
        good = [i for i, (e, t) in enumerate(zip(errors, trained)) if not e and t]
        usable = len(good)  # before any is held out for evaluation
        cuts = [c for e, c in zip(errors, cuts) if not e]
        held: list[int] = []
        if not for_eval:
            keep, held_at = split_off(len(good), val_size_of(recipe, source), seed, index, f"data[{index}].val_size")
            good, held = [good[i] for i in keep], [good[i] for i in held_at]
        chosen = [good[i] for i in mixed_rows(len(good), source.weight, source.samples, seed, index)]
        if for_eval:
            chosen, held = [], chosen
        if held:
            held_parts.append(rows.select(held).select_columns(["input_ids", "attention_mask", "labels"]))
        counted = held if for_eval else chosen
        used = rows.select(chosen)
        used_lengths = [sizes[i] for i in counted]
        (eval_reports if for_eval else reports).append(SourceReport(
            path=source.path,
            format=",".join(sorted(set(names))),
            files=len(encoded),
            records=records,
            bad=records - len(cuts),
            dropped=len(cuts) - usable,
            truncated=sum(c != NOT_CUT for c in cuts),
            truncated_in_prompt=sum(c == CUT_IN_PROMPT for c in cuts),
            available=len(good),
            samples=len(counted),
            tokens=sum(used_lengths),
            trained_tokens=sum(trained[i] for i in counted),
            pretraining=sum(plain[i] for i in good),
            held_out=0 if for_eval else len(held),
        ))
        report = (eval_reports if for_eval else reports)[-1]
        if report.pretraining and not for_eval:
            notes.append(f"data {source.path}: {report.pretraining} of {len(good)} usable records are "
                         "pretraining text: continued pretraining, no chat template, loss on every token")
        if not for_eval:
            parts.append(used.select_columns(["input_ids", "attention_mask", "labels"]))
            lengths += used_lengths
    if unusable or (problems and not recipe.skip_bad_samples):
        raise UserError(problem_list(unusable, problems))
    warnings = skipped_lines(problems, sum(r.records for r in [*reports, *eval_reports]))
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else None
    if dataset is None or len(dataset) == 0:
        raise UserError("no sample has any assistant token left to train on; raise max_length or check the data.")
    held_out = concatenate_datasets(held_parts) if len(held_parts) > 1 else held_parts[0] if held_parts else None
    return Built(dataset, lengths, reports, template_name, template, warnings, problems, notes, held_out,
                 eval_reports)


def load(recipe: RecipeSource, tokenizer: Any = None) -> Any:
    """The encoded dataset exactly as training sees it (input_ids, attention_mask, labels).

    With `packing: true` training groups these rows into token-budget batches
    (`portaft.data.packing`); the rows themselves are the same.
    """
    plugins = get_plugins()
    recipe = plugins.read_recipe(recipe)
    if tokenizer is None:
        tokenizer = plugins.choose_backend(recipe).load_tokenizer(recipe)
        prepare_tokenizer(tokenizer)
    return build(recipe, tokenizer, plugins).dataset


def report_rows(reports: list[SourceReport]) -> list[dict]:
    return [asdict(r) for r in reports]


def describe(report: SourceReport, max_length: int) -> str:
    amount = f"{report.samples} samples" + (f" (of {report.available})" if report.samples != report.available else "")
    amount += f", {report.held_out} held out for evaluation" if report.held_out else ""
    return (f"data {report.path} ({report.format}): {amount}, {report.tokens} tokens ({report.trained_tokens} trained); "
            f"{report.truncated} truncated at {max_length} ({report.truncated_in_prompt} inside a prompt), "
            f"{report.dropped} dropped with nothing left to train, {report.bad} bad skipped")


def _column(rows: Any, name: str) -> list:
    """A whole column as a Python list, read from Arrow at once (dataset[name] formats row by row)."""
    return rows.with_format("arrow")[name].to_pylist()


def _processes(records: int) -> int | None:
    return min(os.cpu_count() or 1, 4) if records >= PARALLEL_FROM else None


