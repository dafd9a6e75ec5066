"""The live log: `portaft_log.jsonl` in the output folder, one JSON line per logging step
(step, epoch, loss, learning rate, grad norm, tokens/s, elapsed and ETA in seconds),
written and flushed as training goes, so `tail -f` follows a run and `portaft runs`
tells a running one from a stopped one. A run appends (a resumed run continues the file).

Other lines carry an `event`: `start` (process id and host, what `portaft runs` checks),
`end`, and `warning`: the first occurrence of each known library warning, which the
terminal does not show (library_warnings).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from transformers.trainer_callback import TrainerCallback

LOG_FILE = "portaft_log.jsonl"
# (category, the module it comes from): warnings about the libraries' own future, which a
# user of portaft cannot act on. They are kept, once each, in the log file
KNOWN_WARNINGS = ((FutureWarning, r"(transformers|peft|accelerate|datasets|torch|huggingface_hub)\b"),
                  (DeprecationWarning, r"(transformers|peft|accelerate|datasets|torch|huggingface_hub)\b"),
                  (UserWarning, r"torch\.utils\.checkpoint|torch\.amp|transformers\.modeling_utils"))


def append_line(path: Path, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


class CaughtWarnings:
    """Known library warnings, each kept once: in memory until the log file is known, then there."""

    def __init__(self) -> None:
        self.pending: list[dict] = []
        self.seen: set[tuple] = set()
        self.path: Path | None = None

    def keep(self, message: Any, category: type, filename: str, lineno: int) -> None:
        key = (category.__name__, str(message), filename, lineno)
        if key in self.seen:
            return
        self.seen.add(key)
        entry = {"event": "warning", "time": round(time.time(), 3), "category": category.__name__,
                 "message": str(message), "where": f"{filename}:{lineno}"}
        if self.path is None:
            self.pending.append(entry)
        else:
            append_line(self.path, entry)

    def write_to(self, path: Path) -> None:
        self.path = path
        for entry in self.pending:
            append_line(path, entry)
        self.pending = []


def is_known(category: type, filename: str) -> bool:
    module = filename.replace(os.sep, ".")
    return any(issubclass(category, kind) and re.search(rf"\b{pattern}", module) for kind, pattern in KNOWN_WARNINGS)


_current: CaughtWarnings | None = None  # the run's, while library_warnings() is open


@contextmanager
def library_warnings() -> Iterator[CaughtWarnings]:
    """Inside: known library warnings go to the run's log (first occurrence each), not to
    the terminal; every other warning shows as usual."""
    global _current
    caught = _current = CaughtWarnings()
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if is_known(category, filename):
                caught.keep(message, category, filename, lineno)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield caught
        finally:
            _current = None


def current_warnings() -> CaughtWarnings | None:
    return _current


class LiveLog(TrainerCallback):
    """Writes the log lines. Tokens are counted where the model is called (a forward
    pre-hook: the non-padding tokens of each training batch), added up on the device and
    read only at a logging step, where the Trainer has waited for the device anyway."""

    def __init__(self, path: Path, model: Any, caught: CaughtWarnings | None = None) -> None:
        self.path = Path(path)
        self.caught = caught
        self.latest: dict = {}  # the last line written (ReadableProgress shows its speed)
        self._tokens: Any = 0
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._began = self._last_time = 0.0
        self._first_step = 0

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
        if mask is not None and getattr(mask, "dim", lambda: 0)() == 2:
            self._tokens = self._tokens + mask.sum()
        elif ids is not None:
            self._tokens = self._tokens + ids.numel()  # packed: one row, no padding

    def close(self) -> None:
        self._hook.remove()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._began = self._last_time = time.time()
        self._first_step = state.global_step
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if state.global_step == 0:  # a run from the start (overwrite: true included) begins a new log
            self.path.unlink(missing_ok=True)
        append_line(self.path, {"event": "start", "time": round(self._began, 3), "pid": os.getpid(),
                                "host": socket.gethostname(), "step": state.global_step, "max_steps": state.max_steps})
        if self.caught is not None:
            self.caught.write_to(self.path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not ("loss" in logs or "eval_loss" in logs):
            return
        now = time.time()
        entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in logs:
                entry[key] = logs[key]
        if "loss" in logs:  # a training log: the tokens trained since the one before
            tokens, self._tokens = float(self._tokens), 0
            entry["tokens_per_s"] = round(tokens / max(now - self._last_time, 1e-9), 1)
            self._last_time = now
        elapsed = now - self._began
        done = state.global_step - self._first_step
        entry["elapsed_s"] = round(elapsed, 1)
        entry["eta_s"] = round(elapsed / done * (state.max_steps - state.global_step), 1) if done > 0 else None
        self.latest = entry
        if state.is_world_process_zero:
            append_line(self.path, entry)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            append_line(self.path, {"event": "end", "time": round(time.time(), 3), "step": state.global_step})
