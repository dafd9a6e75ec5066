"""portaft validate RECIPE [key.path=value ...]: check a recipe and every data record without loading a model."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a recipe and its data without loading any model")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--skip-bad-samples", action="store_true", help="count bad records instead of failing")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft import data, engines
    from portaft.plugins import get_plugins
    from portaft.runner import tracking

    overrides = list(args.overrides) + (["skip_bad_samples=true"] if args.skip_bad_samples else [])
    plugins = get_plugins()
    recipe = plugins.read_recipe(args.recipe, overrides, surroundings=True)
    tracking.prepare(recipe.model_copy(deep=True), plugins)  # a missing or unknown tracker, before the data
    engines.check_in_validate(plugins, recipe, args.recipe)  # train.fsdp / train.deepspeed, before the data
    notes: list[str] = []
    reports = data.check(recipe, notes)
    print(f"{args.recipe}: valid. model {recipe.model.name_or_path}, template {recipe.template}, "
          f"backend {recipe.backend}, output {recipe.train['output_dir']}")
    for r in reports:
        skipped = f", {r.bad} bad (will be skipped)" if r.bad else ""
        skipped += f", about {r.held_out} held out for evaluation" if r.held_out else ""
        text = f", {r.pretraining} pretraining text (no template, every token trained)" if r.pretraining else ""
        print(f"  data {r.path} ({r.format}): {r.records} records{skipped}{text}")
    for line in notes:
        print(f"  note: {line}")
    return 0
