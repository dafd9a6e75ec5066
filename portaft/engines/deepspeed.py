"""`train.deepspeed`: a DeepSpeed config file, a dict, or one of portaft's named presets.

The presets are JSON files shipped in `presets/`, written with "auto" values that
transformers' HfTrainerDeepSpeedConfig fills from the training arguments (batch size,
accumulation, clipping, bf16/fp16), so a preset never disagrees with the recipe. They set
no optimizer or scheduler: the recipe's `train.optim` and scheduler are used.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = {
    "zero2": "ZeRO-2: optimizer state and gradients split over the processes, weights whole on each",
    "zero3": "ZeRO-3: weights, gradients and optimizer state split over the processes",
    "zero3_offload": "ZeRO-3 with weights and optimizer state kept in CPU memory (slowest, fits the most; the "
                     "recipe's optimizer steps on the CPU)",
}
INSTALL = "pip install deepspeed"


def asked(train: dict) -> bool:
    return bool(train.get("deepspeed"))


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.json"


def config(train: dict) -> dict | None:
    """The DeepSpeed config the recipe names, read (None: none asked, or it cannot be read)."""
    value = train.get("deepspeed")
    if isinstance(value, dict):
        return value
    if not value:
        return None
    path = preset_path(value) if value in PRESETS else Path(value)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def stage(train: dict) -> int | None:
    """The ZeRO stage the config asks for (0 where it names none), None without DeepSpeed."""
    loaded = config(train)
    if loaded is None:
        return None
    zero = loaded.get("zero_optimization")
    return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0


def not_installed() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return f"DeepSpeed is not installed in this Python. Install it with `{INSTALL}` (on Ascend NPUs it runs " \
               "through torch_npu, its NPU accelerator), or remove train.deepspeed."
    return None


def problems(train: dict, device: Any) -> list[tuple[str, str]]:
    if not asked(train):
        return []
    value = train["deepspeed"]
    if isinstance(value, str) and value not in PRESETS:
        if not value.endswith(".json") and not Path(value).exists():
            return [("train.deepspeed", f"{value!r} is neither a preset ({', '.join(PRESETS)}) nor a DeepSpeed JSON "
                                        "file. Name a preset or give the file's path.")]
        if not Path(value).is_file():
            return [("train.deepspeed", f"{value}: no such file. Give the path of a DeepSpeed JSON config, or a "
                                        f"preset: {', '.join(PRESETS)}.")]
        if config(train) is None:
            return [("train.deepspeed", f"{value}: not a JSON object, so not a DeepSpeed config. Fix the file.")]
    found = []
    reason = device.cannot.get("deepspeed") if device is not None else None
    if reason:
        found.append(("train.deepspeed", f"{reason}. Remove train.deepspeed here (--nproc N trains with DDP), "
                                         "or run on a CUDA GPU or an Ascend NPU."))
    if missing := not_installed():
        found.append(("train.deepspeed", missing))
    return found


def complete(recipe: Any) -> list[str]:
    """A preset's name becomes its file (transformers reads a path or a dict)."""
    value = recipe.train.get("deepspeed")
    if not isinstance(value, str) or value not in PRESETS:
        return []
    recipe.train["deepspeed"] = str(preset_path(value))
    return [f"train.deepspeed: {value} -> {recipe.train['deepspeed']} (portaft's preset: {PRESETS[value]}; "
            "'auto' values come from the train section)"]
