"""What a run leaves next to its adapter: the effective recipe and the run record, their
file names (what after-training commands read back), and how a file is written whole."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from portaft.recipe import Recipe, dump_recipe

RECIPE_FILE = "portaft_recipe.yaml"
RUN_FILE = "portaft_run.json"
LIBRARIES = ("portaft", "torch", "transformers", "peft", "accelerate", "datasets", "torch_npu", "openmind")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_recipe(output_dir: Path, recipe: Recipe, notes: list[str]) -> Path:
    header = "# The effective recipe portaft ran (defaults spelled out).\n"
    if notes:
        header += "# Changes the backend made to the recipe as written:\n" + "".join(f"#   - {n}\n" for n in notes)
    path = output_dir / RECIPE_FILE
    path.write_text(header + dump_recipe(recipe), encoding="utf-8")
    return path


def write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    """Whole or absent after any kill: write a temporary file, flush it to disk, rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, ensure_ascii=False, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_run(output_dir: Path, record: dict[str, Any]) -> Path:
    """Written last, whole or not at all: its presence says the run finished (checkpoints.py)."""
    path = output_dir / RUN_FILE
    write_json_atomically(path, record)
    return path


def peak_device_memory_gib(device: Any) -> float | None:
    """The most memory tensors held on an accelerator during the run (None on the CPU)."""
    import torch

    # torch.cuda, torch.npu (torch_npu), ...: any device module that counts its memory; not torch.cpu
    module = getattr(torch, getattr(device, "type", str(device)), None)
    if not hasattr(module, "max_memory_allocated") or not module.is_available():
        return None
    return round(module.max_memory_allocated(device) / 2**30, 2)
