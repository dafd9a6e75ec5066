"""Engines past one device: transformers' own `train.fsdp` / `train.fsdp_config` and
`train.deepspeed` keys, checked and completed before any process starts.

`check` finds every problem at once (an engine that is not installed, with the command
that installs it; a device that cannot run it; a combination that does not work) and
raises one RecipeError. `complete` fills in what a new user would not get right (FSDP2,
the decoder layer class to wrap, sharded checkpoints, a named DeepSpeed preset's file),
one note per setting. `check_before_start` is both, for the launcher and `validate`,
which call it before anything loads or any process starts.
"""

from __future__ import annotations

import os
from typing import Any

from portaft.errors import RecipeError

from . import deepspeed, fsdp


def check(recipe: Any, device: Any, processes: int, source: str = "recipe", launching: bool = False) -> None:
    """Raise RecipeError listing every engine problem of the (effective) recipe. `device`:
    the run's Device, or None where it is not known (`validate` without the backend);
    `launching`: checked before torchrun starts the processes (else: in one of them)."""
    problems = _problems(recipe, device, processes, launching)
    if problems:
        raise RecipeError(source, [f"{path}: {message}" for path, message in problems])


def complete(recipe: Any, device: Any, processes: int, source: str = "recipe", launching: bool = False) -> list[str]:
    """Check, then complete the engine settings in place; one note per setting made."""
    check(recipe, device, processes, source, launching)
    notes = deepspeed.complete(recipe) + fsdp.complete(recipe, device)
    return notes + _quantized_storage(recipe)


def check_before_start(backend: Any, recipe: Any, processes: int, source: str) -> Any:
    """What one process would refuse, asked of the backend before N start: its mapping of the
    recipe onto the device (QLoRA where bitsandbytes cannot run, ...), then the engines.
    Returns the effective recipe."""
    effective, _ = backend.resolve(recipe)
    complete(effective, backend.device_for(effective), processes, source, launching=True)
    return effective


def check_in_validate(plugins: Any, recipe: Any, source: str) -> None:
    """`portaft validate`: with the backend the recipe names, as the launcher checks; with
    `backend: auto` (the machine that trains may not be this one), what needs no device."""
    from portaft.errors import BackendUnavailable

    try:
        backend = plugins.choose_backend(recipe) if recipe.backend != "auto" else None
    except BackendUnavailable:
        backend = None
    if backend is None:
        check(recipe, None, 1, source, launching=True)
    else:
        check_before_start(backend, recipe, 1, source)


def asked(recipe: Any) -> bool:
    """Whether the recipe asks for FSDP or DeepSpeed (which `portaft run` starts through torchrun)."""
    return fsdp.asked(recipe.train) or deepspeed.asked(recipe.train)


def sharded_weights(recipe: Any) -> str | None:
    """Which engine splits the weights themselves over the processes (FSDP, ZeRO-3), else None."""
    if fsdp.asked(recipe.train):
        return "FSDP"
    if deepspeed.stage(recipe.train) == 3:
        return "DeepSpeed ZeRO-3"
    return None


def _problems(recipe: Any, device: Any, processes: int, launching: bool) -> list[tuple[str, str]]:
    train = recipe.train
    asked = [key for key, on in (("train.fsdp", fsdp.asked(train)), ("train.deepspeed", deepspeed.asked(train))) if on]
    if len(asked) == 2:
        return [("train.fsdp", "set together with train.deepspeed: both would shard the same model. Keep one "
                               "(docs/scaling.md says which for which case).")]
    problems = deepspeed.problems(train, device) + fsdp.problems(train, device)
    if asked and not problems and not launching and "LOCAL_RANK" not in os.environ:
        problems.append((asked[0], "FSDP and DeepSpeed train in processes that torchrun starts, even one: run "
                                   "`portaft run RECIPE` (it starts them), or your script with `torchrun "
                                   "--nproc-per-node N script.py`."))
    if asked and not problems:
        problems += _combinations(recipe, processes)
    return problems


def _combinations(recipe: Any, processes: int) -> list[tuple[str, str]]:
    """What does not combine with the engine asked for."""
    problems = []
    split = sharded_weights(recipe)
    q = recipe.quantization
    if split and q is not None and q.bits == 8:
        problems.append(("quantization.bits", f"8-bit weights cannot be sharded by {split} (bitsandbytes' int8 "
                                              "layers keep their own state). Use bits: 4 (QLoRA), or train.deepspeed: "
                                              "zero2, which keeps the weights whole."))
    elif split and q is not None and q.storage == "uint8":
        problems.append(("quantization.storage", f"uint8: {split} shards tensors of the model's float dtype, so the "
                                                "4-bit weights must be stored as one (bnb_4bit_quant_storage). Set "
                                                "storage: auto (the compute dtype) or bf16."))
    if split == "DeepSpeed ZeRO-3" and recipe.eval_prompts:
        problems.append(("eval_prompts", "ZeRO-3 loads the weights already split (zero.Init), and only DeepSpeed's "
                                         "engine, set up when training starts, can run them: the answers before "
                                         "training cannot be generated. Remove eval_prompts (and eval_every) and ask "
                                         "the trained adapter with `portaft chat OUTPUT_DIR` after the run."))
    elif split and processes > 1 and recipe.eval_prompts:
        problems.append(("eval_prompts", f"the answers are generated by the first process alone, while {split} "
                                         f"splits the weights over all {processes}: it would wait for the others "
                                         "forever. Remove eval_prompts (and eval_every) and ask the trained adapter "
                                         "with `portaft chat OUTPUT_DIR` after the run."))
    return problems


def _quantized_storage(recipe: Any) -> list[str]:
    """QLoRA under FSDP or ZeRO-3: the 4-bit weights stored in the compute dtype, so they
    can be sharded like every other tensor (bnb_4bit_quant_storage, as peft's FSDP-QLoRA
    guide does)."""
    q = recipe.quantization
    if q is None or q.storage != "auto":
        return []
    split = sharded_weights(recipe)
    if not split:
        return []  # auto: bitsandbytes' own uint8 storage
    q.storage = q.compute_dtype
    return [f"quantization.storage: auto -> {q.storage} ({split} shards the 4-bit weights as {q.storage} tensors: "
            "bnb_4bit_quant_storage)"]
