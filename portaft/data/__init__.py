"""The data step: read every source, normalise, render with the chat template, mask, truncate, mix.

    dataset = portaft.data.load("examples/self_identity.yaml")
    dataset[0]  # {"input_ids": [...], "attention_mask": [...], "labels": [...]}

Modules: `sources` (files, reading, where a record came from), `formats` (records to
conversations), `templates` + `chat_templates` (rendering, trained spans), `encode`
(the batched tokenize-and-mask pass), `mixing`; how training draws batches: `collator`
(padded), `packing` (flattened, token-budget batches), `shares` (several processes'
shares of a step).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from portaft.errors import UserError
from portaft.plugins import Format, Plugins, get_plugins
from portaft.recipe import Recipe, RecipeSource

from .collator import Seq2SeqCollator
from .encode import CUT_IN_PROMPT, NOT_CUT, EncodeSettings, Encoder
from .formats import BadSample, detect_format, normalise, record_problem
from .mixing import mixed_rows
from .sources import progress_bars, read_file, records_of, source_files
from .splits import held_out_count, split_off, val_size_of
from .templates import check_template, choose_template

__all__ = ["BadSample", "Built", "Seq2SeqCollator", "SourceReport", "build", "check", "load", "prepare_tokenizer"]

SHOWN_PROBLEMS = 20  # bad records listed in one error; the rest are counted
PARALLEL_FROM = 50_000  # records in a file from which encoding uses several processes
BAR_FROM = 5_000  # records in a file from which encoding shows a progress bar


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
    held_out: int = 0  # samples kept for evaluation (val_size), never trained on


@dataclass
class Built:
    dataset: Any  # datasets.Dataset: input_ids, attention_mask, labels
    lengths: list[int]  # tokens per row, for packing
    reports: list[SourceReport]
    template_name: str
    template: str  # Jinja source
    warnings: list[str] = field(default_factory=list)  # skipped records, located
    eval_dataset: Any = None  # held out (val_size) and eval_data: sources' rows, or None
    eval_reports: list[SourceReport] = field(default_factory=list)  # one per eval_data: source


def prepare_tokenizer(tokenizer: Any) -> list[str]:
    """Give the tokenizer a pad token if it lacks one (pad = eos, as the seeds do)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        return [f"tokenizer pad token: none -> eos ({tokenizer.eos_token!r}); padding is masked from the loss"]
    return []


def build(recipe: Recipe, tokenizer: Any, plugins: Plugins) -> Built:
    """Every source encoded and mixed, with one report per source. Bad records raise one
    UserError listing them all, unless recipe.skip_bad_samples counts them instead; a
    file that cannot be used at all (empty, unknown format) always raises. `plugins`:
    where the named templates and data formats come from."""
    from datasets import concatenate_datasets

    from portaft.compat import chat_template_renderer

    template_name, template = choose_template(recipe.template, tokenizer, plugins.templates,
                                              _model_type(recipe))
    check_template(chat_template_renderer(tokenizer, template), template_name, tokenizer)
    settings = EncodeSettings(template, recipe.max_length, recipe.train_on, recipe.system)
    seed = int(recipe.train.get("seed", 42))
    problems: list[str] = []  # bad records
    unusable: list[str] = []  # whole files
    parts, lengths, reports = [], [], []
    held_parts, eval_reports = [], []
    sources = [(index, source, False) for index, source in enumerate(recipe.data)]
    sources += [(index, source, True) for index, source in enumerate(recipe.eval_data)]
    for index, source, for_eval in sources:
        encoded, names, records, located = [], [], 0, []
        for file, fmt in _read_source(source, plugins.formats, problems, unusable):
            with progress_bars(len(file.rows) >= BAR_FROM):
                rows = file.rows.map(
                    Encoder(tokenizer, fmt, settings), batched=True, remove_columns=file.rows.column_names,
                    num_proc=_processes(len(file.rows)), desc=f"Encoding {file.path}",
                )
            errors = _column(rows, "error")
            located += [f"{file.where(i)}: {e}" for i, e in enumerate(errors) if e]
            records += len(rows) + len(file.bad_lines)
            encoded.append(rows)
            names.append(fmt.name)
        problems += located
        if not encoded:
            continue
        rows = concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
        errors, trained, cuts, sizes = (_column(rows, name) for name in ("error", "trained", "cut", "length"))
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
            held_out=0 if for_eval else len(held),
        ))
        if not for_eval:
            parts.append(used.select_columns(["input_ids", "attention_mask", "labels"]))
            lengths += used_lengths
    warnings = []
    if unusable or (problems and not recipe.skip_bad_samples):
        raise UserError(_problem_list(unusable, problems))
    if problems:
        warnings = [f"skipped {len(problems)} bad record(s):"] + problems
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else None
    if dataset is None or len(dataset) == 0:
        raise UserError("no sample has any assistant token left to train on; raise max_length or check the data.")
    held_out = concatenate_datasets(held_parts) if len(held_parts) > 1 else held_parts[0] if held_parts else None
    return Built(dataset, lengths, reports, template_name, template, warnings, held_out, eval_reports)


def _read_source(source: Any, formats: dict[str, Format], problems: list[str], unusable: list[str]):
    """(file, format) for every readable, non-empty file of a source; unreadable lines are
    appended to `problems`, files that cannot be used at all to `unusable`."""
    for path in source_files(source.path):
        file = read_file(path)
        problems += file.bad_lines
        if file.rows is None and file.bad_lines:
            continue  # every line is bad: each is already listed
        if file.rows is None or len(file.rows) == 0:
            unusable.append(f"{path}: holds no samples. Add data or remove it from `data:`.")
            continue
        name = source.format
        if name == "auto":
            name = detect_format(file.first_record(), formats)
            if name is None:
                unusable.append(
                    f"{file.where(0)}: cannot tell the data format from the record's keys "
                    f"({', '.join(file.first_record())}). Formats and their keys: "
                    + "; ".join(f"{f.name} ({', '.join(f.keys)})" for f in formats.values())
                    + ". Set `format:` or fix the data."
                )
                continue
        yield file, formats[name]


def check(recipe: RecipeSource) -> list[SourceReport]:
    """Read and normalise every record without a tokenizer or model (`portaft validate`).

    Raises one UserError listing every bad record unless skip_bad_samples is set.
    """
    plugins = get_plugins()
    recipe = plugins.read_recipe(recipe)
    formats = plugins.formats
    problems: list[str] = []
    unusable: list[str] = []
    reports = []
    for index, source in enumerate([*recipe.data, *recipe.eval_data]):
        records = bad = 0
        names = set()
        for file, fmt in _read_source(source, formats, problems, unusable):
            with progress_bars(len(file.rows) >= BAR_FROM):
                errors = _column(file.rows.map(_Checker(fmt), batched=True, remove_columns=file.rows.column_names,
                                               desc=f"Checking {file.path}"), "error")
            located = [f"{file.where(i)}: {e}" for i, e in enumerate(errors) if e]
            problems += located
            records += len(errors) + len(file.bad_lines)
            bad += len(located) + len(file.bad_lines)
            names.add(fmt.name)
        held = held_out_count(records - bad, val_size_of(recipe, source)) if index < len(recipe.data) else 0
        if held and held >= records - bad:
            unusable.append(f"{source.path}: val_size {val_size_of(recipe, source):g} holds out {held} of its "
                            f"{records - bad} good records, leaving none to train on. Give a smaller fraction "
                            "or count.")
        reports.append(SourceReport(source.path, ",".join(sorted(names)), 0, records, bad, 0, 0, 0,
                                    records - bad, 0, 0, 0, held))
    if unusable or (problems and not recipe.skip_bad_samples):
        raise UserError(_problem_list(unusable, problems))
    return reports


class _Checker:
    def __init__(self, fmt: Format):
        self.fmt = fmt

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        errors = []
        for record in records_of(batch):
            try:
                normalise(record, self.fmt)
                errors.append("")
            except Exception as exc:  # BadSample, or a plugin format's own error
                errors.append(record_problem(exc))
        return {"error": errors}


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


def _problem_list(unusable: list[str], problems: list[str]) -> str:
    lines = [f"{len(unusable)} data file(s) cannot be used:"] + [f"  {p}" for p in unusable] if unusable else []
    if problems:
        lines.append(f"{len(problems)} bad record(s) in the data:")
        lines += [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
        if len(problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
        lines.append("Fix them, or set skip_bad_samples: true (or --skip-bad-samples) to skip and count them.")
    return "\n".join(lines)


def _processes(records: int) -> int | None:
    return min(os.cpu_count() or 1, 4) if records >= PARALLEL_FROM else None


def _model_type(recipe: Recipe) -> str | None:
    """config.json's model_type, for template: auto; None when there is no readable config."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(recipe.model.name_or_path,
                                          trust_remote_code=recipe.model.trust_remote_code).model_type
    except Exception:  # a missing or remote config only means no guess
        return None
