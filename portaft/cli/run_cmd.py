"""portaft run RECIPE [--backend NAME] [key.path=value ...]"""

from __future__ import annotations

import os
import subprocess
import sys

from . import nodes


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="fine-tune as a recipe says")
    p.add_argument("recipe", help="path to the recipe YAML")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="e.g. lora.r=16 train.max_steps=10")
    p.add_argument("--backend", help="cpu, cuda, npu, a plugin's, or auto (overrides the recipe)")
    p.add_argument("--device", choices=["auto", "cpu"],
                   help="cpu: run the backend's library code on the CPU (overrides the recipe's device)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train in N processes on this machine through torchrun (DDP: gloo, nccl or hccl)")
    nodes.add_arguments(p)
    p.add_argument("--skip-bad-samples", action="store_true", help="count and skip bad records instead of stopping")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    overrides = list(args.overrides) + (["skip_bad_samples=true"] if args.skip_bad_samples else [])
    overrides += [f"device={args.device}"] if args.device else []
    if args.nproc < 1:
        from portaft.errors import UserError

        raise UserError(f"--nproc {args.nproc}: give a number of processes, 1 or more.")
    if "LOCAL_RANK" not in os.environ and (nodes.several(args) or _asks_for_an_engine(args, overrides)):
        return launch(args, overrides)
    from portaft.runner import run

    result = run(args.recipe, backend=args.backend, overrides=overrides)
    print_where(result.output_dir)
    return 0


def _asks_for_an_engine(args, overrides: list[str]) -> bool:
    """FSDP and DeepSpeed need torchrun's processes, even one."""
    from portaft import engines
    from portaft.plugins import get_plugins

    return engines.asked(get_plugins().read_recipe(args.recipe, overrides))


def print_where(output_dir) -> None:
    """Where a finished run's outputs are, and the one command to talk to the result."""
    import shlex

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the first process speaks for all
        return
    folder = shlex.quote(str(output_dir))
    print(f"portaft: outputs in {output_dir}/ (report.md, loss.png, portaft_log.jsonl, portaft_recipe.yaml)\n"
          f"portaft: chat with the result:  portaft chat {folder}", flush=True)


def launch(args, overrides: list[str]) -> int:
    """Check what can be checked here (recipe, backend), then start N copies of this
    command under torchrun; each one trains as one process of a DDP run."""
    from portaft import engines
    from portaft.plugins import get_plugins

    torchrun = nodes.torchrun_arguments(args)
    plugins = get_plugins()
    recipe = plugins.read_recipe(args.recipe, overrides, surroundings=True)
    backend = plugins.choose_backend(recipe, args.backend)
    engines.check_before_start(backend, recipe, args.nproc * args.nnodes, args.recipe)  # what one process would refuse
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "portaft", "run", args.recipe,
               "--backend", backend.name, *overrides]
    collectives = backend.device_for(recipe).collectives
    print(f"portaft: launching {nodes.describe(args)} on {backend.name} ({collectives}) with torchrun",
          flush=True)
    code = subprocess.call(command)
    if code == 0:
        print_where(recipe.train["output_dir"])
    return code
