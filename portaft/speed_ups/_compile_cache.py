"""torch.compile's work kept between runs on one machine (used by compiled_layers).

Inductor already caches compiled kernels on disk (in /tmp); torch's portable cache
artifacts (`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`, torch >= 2.7)
also keep the graphs dynamo and AOTAutograd made, in one file. portaft keeps that file in
the user's cache folder ($PORTAFT_CACHE, else ~/.cache/portaft), one per torch version,
device and Python, and loads it before the layers first compile: what a cache does not
match is compiled as usual, so a stale file costs nothing but its reading.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from transformers.trainer_callback import TrainerCallback


def cache_file(device_name: str) -> Path:
    import torch

    root = Path(os.environ.get("PORTAFT_CACHE") or Path.home() / ".cache" / "portaft")
    key = f"torch{torch.__version__}-py{platform.python_version()}-{device_name}"
    return root / "compile" / (re.sub(r"[^A-Za-z0-9.+-]+", "_", key) + ".bin")


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine()


def load(path: Path) -> str:
    """Load the kept artifacts, if any; a note of what happened."""
    import torch

    if not hasattr(torch.compiler, "load_cache_artifacts"):
        return "this torch keeps no compile artifacts (torch >= 2.7 does)"
    if not path.is_file():
        return f"no compile cache yet: this run's is kept in {path}"
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 (a cache that does not load is compiled afresh)
        return f"the compile cache {path} did not load ({type(exc).__name__}); compiling afresh"
    return f"compile cache loaded from {path}"


def save(path: Path) -> bool:
    """Keep what this process compiled (written whole, then renamed: never a half file). A
    smaller set than the one kept (a run that found everything cached) leaves it as it is."""
    import torch

    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return False
    saved = torch.compiler.save_cache_artifacts()
    if not saved or not saved[0]:
        return False
    blob = saved[0]
    if path.is_file() and path.stat().st_size >= len(blob):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(blob)
    partial.replace(path)
    return True


class CompileProgress(TrainerCallback):
    """Says that the first step compiles (so a user does not think it hangs), how long it took,
    and keeps the compiled artifacts once the steps that compile are done."""

    KEEP_AFTER_STEP = 3  # the layers compile in step 1, and once more for the other attention kernel soon after

    def __init__(self, path: Path, speak: bool) -> None:
        self.path, self.speak, self.steps, self.started = path, speak, 0, 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.steps == 0:
            self.started = time.perf_counter()
            self._say("compiling the decoder layers (torch.compile, in the first step; up to a minute or two on a "
                      "machine that has not compiled them before)...")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps += 1
        if self.steps == 1:
            self._say(f"first step done in {time.perf_counter() - self.started:.1f} s, the compile included")
        if self.steps == self.KEEP_AFTER_STEP:
            self.keep()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.steps < self.KEEP_AFTER_STEP:
            self.keep()

    def keep(self) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        try:
            save(self.path)
        except OSError as exc:  # a cache folder that cannot be written costs the next run a compile, no more
            self._say(f"warning: the compile cache was not kept ({exc})")

    def _say(self, text: str) -> None:
        if self.speak and int(os.environ.get("RANK", "0")) == 0:
            print(f"portaft: {text}", file=sys.stderr, flush=True)
