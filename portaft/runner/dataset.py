"""Step 3, data: the backend's tokenizer, then every source read, rendered, masked and
mixed (portaft/data/). The first process encodes, filling datasets' cache, before the
others read it. The tokenizer then carries the chat template the run trains with, so
checkpoints and the output carry it too."""

from __future__ import annotations

from typing import Any

from portaft import data

from .notes import Notes


def read_data(resolved: Any, world: Any, notes: Notes) -> tuple[Any, data.Built]:
    recipe = resolved.recipe
    tokenizer = resolved.backend.load_tokenizer(recipe)
    notes.add(*data.prepare_tokenizer(tokenizer))
    with world.args.main_process_first(desc="portaft data"):
        built = data.build(recipe, tokenizer, resolved.plugins)
    for report in built.reports:
        notes.say(data.describe(report, recipe.max_length))
    for report in built.eval_reports:
        notes.say("eval " + data.describe(report, recipe.max_length))
    notes.add(*built.notes)
    for line in built.warnings:
        notes.say(f"warning: {line}")
    if built.skipped and world.first:  # every skipped record, where and why
        data.write_skipped(built.skipped, world.output_dir)
    tokenizer.chat_template = built.template
    return tokenizer, built
