"""portaft validate RECIPE [key.path=value ...]: check a recipe without loading a model."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a recipe without loading any model")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    sources = ", ".join(s.path for s in recipe.data)
    print(f"{args.recipe}: valid. model {recipe.model.name_or_path}, data {sources}, "
          f"template {recipe.template}, backend {recipe.backend}, output {recipe.train['output_dir']}")
    return 0
