"""portaft run RECIPE [--backend NAME] [key.path=value ...]"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="fine-tune as a recipe says")
    p.add_argument("recipe", help="path to the recipe YAML")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="e.g. lora.r=16 train.max_steps=10")
    p.add_argument("--backend", help="cpu, cuda, npu, a plugin's, or auto (overrides the recipe)")
    p.add_argument("--device", choices=["auto", "cpu"],
                   help="cpu: run the backend's library code on the CPU (overrides the recipe's device)")
    p.add_argument("--skip-bad-samples", action="store_true", help="count and skip bad records instead of stopping")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.runner import run

    overrides = list(args.overrides) + (["skip_bad_samples=true"] if args.skip_bad_samples else [])
    overrides += [f"device={args.device}"] if args.device else []
    run(args.recipe, backend=args.backend, overrides=overrides)
    return 0
