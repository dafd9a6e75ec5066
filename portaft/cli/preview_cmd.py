"""portaft preview RECIPE [-n 3]: the first samples as the model will see them, trained text marked."""

from __future__ import annotations

import sys

OPEN, CLOSE = "⟦", "⟧"
GREEN, RESET = "\033[32m", "\033[0m"


def add_parser(sub) -> None:
    p = sub.add_parser("preview", help="show the first samples rendered, with the trained text marked")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("-n", "--samples", type=int, default=3, help="how many samples to show (default 3)")
    p.add_argument("--backend", help="whose tokenizer loader to use (default: as for `run`)")
    p.add_argument("--skip-bad-samples", action="store_true", help="count and skip bad records")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft import data
    from portaft.plugins import get_plugins

    overrides = list(args.overrides) + (["skip_bad_samples=true"] if args.skip_bad_samples else [])
    plugins = get_plugins()
    recipe = plugins.read_recipe(args.recipe, overrides)
    tokenizer = plugins.choose_backend(recipe, args.backend).load_tokenizer(recipe)
    data.prepare_tokenizer(tokenizer)
    built = data.build(recipe, tokenizer, plugins)
    color = sys.stdout.isatty()
    print(f"template: {built.template_name}   train_on: {recipe.train_on}   max_length: {recipe.max_length}")
    for report in built.reports:
        print(data.describe(report, recipe.max_length))
    for line in built.notes:
        print(f"note: {line}")
    for line in built.warnings:
        print(f"warning: {line}")
    legend = f"{GREEN}green{RESET}" if color else f"{OPEN}between these marks{CLOSE}"
    print(f"trained (unmasked) text is shown {legend}")
    for index in range(min(args.samples, len(built.dataset))):
        row = built.dataset[index]
        trained = sum(label != -100 for label in row["labels"])
        print(f"\n--- sample {index + 1} of {len(built.dataset)}: {len(row['input_ids'])} tokens, {trained} trained ---")
        print(marked_text(tokenizer, row["input_ids"], row["labels"], color))
    return 0


def marked_text(tokenizer, ids: list[int], labels: list[int], color: bool = False) -> str:
    """The decoded sample with every run of trained tokens wrapped in markers (or green)."""
    start, end = (GREEN, RESET) if color else (OPEN, CLOSE)
    pieces, run, run_trained = [], [], None
    for token, label in zip(ids, labels):
        trained = label != -100
        if run and trained != run_trained:
            pieces.append(_piece(tokenizer, run, run_trained, start, end))
            run = []
        run.append(token)
        run_trained = trained
    if run:
        pieces.append(_piece(tokenizer, run, run_trained, start, end))
    return "".join(pieces)


def _piece(tokenizer, run: list[int], trained: bool, start: str, end: str) -> str:
    text = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return f"{start}{text}{end}" if trained else text
