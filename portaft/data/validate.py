"""`portaft validate`'s data pass: every record read and normalised without a model.

It finds what `run` would refuse or skip, the same way: a chat template masking cannot
work with (run's own check, templates.checked_template, made first as run makes it), bad
fields, kinds portaft does not train (preference, KTO, multimodal), and tool calls or
reasoning the chat template cannot render (probed only when some record has them). It
loads the tokenizer, as run does before its data step, and never the model.
"""

from __future__ import annotations

from typing import Any, Callable

from portaft.errors import UserError
from portaft.plugins import Format, get_plugins
from portaft.recipe import RecipeSource

from .formats import PretrainText, normalise, record_problem, record_reason
from .kinds import unsupported_need
from .problems import Problem, problem_list, skipped_lines
from .reading import SourceReport, model_type, prepare_tokenizer, read_source
from .sources import progress_bars, records_of
from .splits import held_out_count, val_size_of
from .templates import checked_template, template_abilities

BAR_FROM = 5_000  # records in a file from which checking shows a progress bar


def check(recipe: RecipeSource, notes: list[str] | None = None) -> list[SourceReport]:
    """Read and normalise every record without a model (`portaft validate`).

    Raises one UserError listing every bad record unless skip_bad_samples is set.
    Returns one SourceReport per source; how files were read is added to `notes`."""
    plugins = get_plugins()
    recipe = plugins.read_recipe(recipe)
    problems: list[Problem] = []
    unusable: list[str] = []
    notes = [] if notes is None else notes
    name, render = _template(recipe, plugins)
    reports, waiting = [], []  # waiting: (report, located needs) until the template's abilities are known
    for index, source in enumerate([*recipe.data, *recipe.eval_data]):
        records = bad = plain = 0
        names, needing = set(), []
        for file, fmt in read_source(source, plugins.formats, problems, unusable, notes):
            with progress_bars(len(file.rows) >= BAR_FROM):
                rows = file.rows.map(_Checker(fmt), batched=True, remove_columns=file.rows.column_names,
                                     desc=f"Checking {file.path}")
            columns = rows.with_format("arrow")
            errors, reasons, needs = (columns[name].to_pylist() for name in ("error", "reason", "needs"))
            located = [Problem(file.where(i), e, r) for i, (e, r) in enumerate(zip(errors, reasons)) if e]
            needing += [(file.where(i), set(n.split(","))) for i, n in enumerate(needs) if n]
            problems += located
            records += len(errors) + len(file.bad_lines)
            bad += len(located) + len(file.bad_lines)
            plain += sum(columns["pretraining"].to_pylist())
            names.add(fmt.name)
        held = held_out_count(records - bad, val_size_of(recipe, source)) if index < len(recipe.data) else 0
        if held and held >= records - bad:
            unusable.append(f"{source.path}: val_size {val_size_of(recipe, source):g} holds out {held} of its "
                            f"{records - bad} good records, leaving none to train on. Give a smaller fraction "
                            "or count.")
        report = SourceReport(source.path, ",".join(sorted(names)), 0, records, bad, 0, 0, 0,
                              records - bad, 0, 0, 0, plain, held)
        reports.append(report)
        waiting.append((report, needing))
    if any(needing for _, needing in waiting):
        abilities = template_abilities(render)
        for report, needing in waiting:
            for where, needs in needing:
                if needs - abilities:
                    exc = unsupported_need(max(needs - abilities), name)
                    problems.append(Problem(where, str(exc), exc.reason))
                    report.bad += 1
                    report.available -= 1
    if unusable or (problems and not recipe.skip_bad_samples):
        raise UserError(problem_list(unusable, problems))
    notes += skipped_lines(problems, sum(r.records for r in reports))  # what run will skip, as run says it
    return reports


def _template(recipe: Any, plugins: Any) -> tuple[str, Callable[..., str]]:
    """(name, renderer) of the template run would train with, checked as run checks it."""
    try:
        tokenizer = plugins.choose_backend(recipe).load_tokenizer(recipe)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the chat template ({recipe.template!r}) is checked with the model's tokenizer, as run "
                        f"checks it, and the tokenizer could not be loaded: {exc}") from None
    prepare_tokenizer(tokenizer)
    name, _, render = checked_template(recipe.template, tokenizer, plugins.templates, model_type(recipe))
    return name, render


class _Checker:
    def __init__(self, fmt: Format):
        self.fmt = fmt

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        errors, reasons, needs, plain = [], [], [], []
        for record in records_of(batch):
            try:
                conversation = normalise(record, self.fmt)
                errors.append("")
                reasons.append("")
                text = isinstance(conversation, PretrainText)
                needs.append("" if text else ",".join(sorted(conversation.needs)))
                plain.append(int(text))
            except Exception as exc:  # BadSample, or a plugin format's own error
                errors.append(record_problem(exc))
                reasons.append(record_reason(exc))
                needs.append("")
                plain.append(0)
        return {"error": errors, "reason": reasons, "needs": needs, "pretraining": plain}
