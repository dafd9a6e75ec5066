"""`train.fsdp`: PyTorch FSDP2 through accelerate, in transformers' current spelling.

A recipe writes `fsdp: auto` (or a strategy: `full_shard`, `shard_grad_op`, with
`auto_wrap` / `offload` as the old strings had them); the effective recipe gets `fsdp: true`
and a complete `fsdp_config`: FSDP2 (`version: 2`), the model's decoder layer class
wrapped (read from `model._no_split_modules` of the model built on the meta device),
sharded checkpoints, and FSDP's own activation checkpointing where the recipe asks for
gradient checkpointing. The final save gathers a full state dict on the first process
(`full_state_for_final_save`). Settings the recipe wrote itself are kept.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

WORDS = {"auto", "true", "full_shard", "shard_grad_op", "auto_wrap", "offload"}
FSDP1_ONLY = {"hybrid_shard", "hybrid_shard_zero2", "no_shard"}
INSTALL = "pip install -U 'torch>=2.6' 'accelerate>=1.6' 'transformers>=5'"


def asked(train: dict) -> bool:
    return train.get("fsdp") not in (None, False, "", [])


def _words(value: Any) -> list[str]:
    if value is True:
        return ["auto"]
    items = value.split() if isinstance(value, str) else list(value)
    return [str(getattr(item, "value", item)).lower() for item in items]


def _user_config(train: dict) -> dict | str:
    """The recipe's fsdp_config as a dict, or what is wrong with it."""
    value = train.get("fsdp_config") or {}
    if isinstance(value, str):
        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return (f"{train['fsdp_config']}: cannot be read as JSON ({exc}). Give a JSON file or write the settings "
                    "inline.")
    if not isinstance(value, dict):
        return "not a mapping of FSDP settings. Write them as keys under fsdp_config."
    return {key[5:] if key.startswith("fsdp_") else key: item for key, item in value.items()}


def completed_config(train: dict) -> dict:
    """train.fsdp_config as `complete` left it (a dict of settings); {} where there is none."""
    config = train.get("fsdp_config")
    return config if isinstance(config, dict) else {}


def own_checkpointing(train: dict) -> bool | None:
    """FSDP's own activation checkpointing (`complete` moves the recipe's there) under train.fsdp, else None."""
    return bool(completed_config(train).get("activation_checkpointing")) if asked(train) else None


def unavailable() -> str | None:
    """Why FSDP2 through transformers cannot run with the installed packages, else None."""
    import dataclasses

    if importlib.util.find_spec("torch.distributed.fsdp") is None:
        return f"this torch has no FSDP. Install: {INSTALL}"
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        return f"this torch has no FSDP2 (fully_shard, torch 2.6 and later). Install: {INSTALL}"
    from accelerate import FullyShardedDataParallelPlugin

    if "fsdp_version" not in {f.name for f in dataclasses.fields(FullyShardedDataParallelPlugin)}:
        return f"this accelerate has no FSDP2. Install: {INSTALL}"
    import transformers.training_args as training_args

    if "fsdp_version" not in Path(training_args.__file__).read_text(encoding="utf-8"):
        return f"this transformers ({_version()}) cannot hand FSDP2 to accelerate. Install: {INSTALL}"
    return None


def _version() -> str:
    import transformers

    return transformers.__version__


def problems(train: dict, device: Any) -> list[tuple[str, str]]:
    if not asked(train):
        return []
    found = []
    words = _words(train["fsdp"])
    if old := [w for w in words if w in FSDP1_ONLY]:
        found.append(("train.fsdp", f"{old[0]} is an FSDP1 strategy, and FSDP1 is deprecated in transformers 5. "
                                    "portaft sets up FSDP2: use auto, full_shard or shard_grad_op."))
    elif unknown := [w for w in words if w not in WORDS]:
        found.append(("train.fsdp", f"unknown FSDP option {unknown[0]!r}. Use auto, full_shard or shard_grad_op "
                                    "(with auto_wrap or offload if you like)."))
    elif {"full_shard", "shard_grad_op"} <= set(words):
        found.append(("train.fsdp", "full_shard and shard_grad_op together: choose one."))
    config = _user_config(train)
    if isinstance(config, str):
        found.append(("train.fsdp_config", config))
    elif int(config.get("version", 2)) != 2:
        found.append(("train.fsdp_config.version", f"{config['version']}: portaft sets up FSDP2 only (FSDP1 is "
                                                   "deprecated in transformers 5). Remove version or set it to 2."))
    reason = device.cannot.get("fsdp") if device is not None else None
    if reason:
        found.append(("train.fsdp", f"{reason}. Remove train.fsdp (--nproc N trains with DDP), or run on a CUDA GPU "
                                    "or an Ascend NPU."))
    if missing := unavailable():
        found.append(("train.fsdp", missing))
    return found


def complete(recipe: Any, device: Any) -> list[str]:
    train = recipe.train
    if not asked(train):
        return []
    words, config = _words(train["fsdp"]), _user_config(train)
    notes = [f"train.fsdp: {train['fsdp']} -> true, with the settings in train.fsdp_config (transformers' current "
             "spelling; the string form is deprecated)"]
    train["fsdp"] = True
    reshard = "shard_grad_op" not in words
    made = {
        "version": (2, "FSDP2: torch's fully_shard, per-parameter sharding"),
        "reshard_after_forward": (reshard, "full_shard: weights gathered again in the backward pass" if reshard else
                                  "shard_grad_op: weights kept gathered between forward and backward"),
        "auto_wrap_policy": ("TRANSFORMER_BASED_WRAP", "one FSDP unit per decoder layer"),
        "state_dict_type": ("SHARDED_STATE_DICT", "each process writes its own shard in checkpoints; the final "
                            "save gathers a full state dict on the first process"),
    }
    if "offload" in words:
        made["cpu_offload"] = (True, "weights, gradients and optimizer state kept in CPU memory")
    if layers := decoder_layers(recipe):
        made["transformer_layer_cls_to_wrap"] = (layers, "the model's decoder layer class (model._no_split_modules)")
    checkpointing = [key for key in ("gradient_checkpointing", "activation_checkpointing") if train.get(key)]
    if checkpointing:
        made["activation_checkpointing"] = (True, f"FSDP's own, instead of train.{checkpointing[0]} (which would "
                                                  "gather each layer's weights once more in the backward pass)")
        for key in checkpointing:
            train[key] = False
    for key, (value, why) in made.items():
        if key not in config:
            config[key] = value
            notes.append(f"train.fsdp_config.{key}: {value} ({why})")
    train["fsdp_config"] = config
    precision = "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "float32"
    notes.append(f"FSDP mixed precision: {precision} (from train.bf16/fp16: accelerate computes in it and keeps "
                 "the sharded weights as loaded)")
    return notes


def decoder_layers(recipe: Any) -> list[str] | None:
    """The model's repeated layer classes, from the model built on the meta device (no
    weights read); None where it cannot be built here (accelerate then reads the same
    `_no_split_modules` from the loaded model)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = recipe.model.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(recipe.model.name_or_path, trust_remote_code=remote)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote)
    except Exception:  # noqa: BLE001 (an unreachable hub id, a remote class that needs a GPU: accelerate decides)
        return None
    present = {type(module).__name__ for module in model.modules()}
    return [name for name in (model._no_split_modules or []) if name in present] or None


def full_state_for_final_save(trainer: Any) -> None:
    """Under FSDP with sharded checkpoints, Trainer.save_model writes nothing; gathering a
    full state dict (on every process, written by the first) is what transformers' FSDP
    guide does before the final save."""
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
    if getattr(trainer, "is_fsdp_enabled", False) and plugin is not None:
        plugin.set_state_dict_type("FULL_STATE_DICT")
