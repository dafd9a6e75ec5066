"""Training callbacks portaft adds to every backend's Trainer."""

from __future__ import annotations

import gc
from typing import Any, Callable

from transformers.trainer_callback import ProgressCallback, TrainerCallback


class ReadableProgress(ProgressCallback):
    """transformers' progress bar, with log lines written for people instead of dicts."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key, label, spec in (("loss", "loss", ".4f"), ("grad_norm", "grad_norm", ".3f"),
                                 ("learning_rate", "lr", ".2e"), ("epoch", "epoch", ".2f"),
                                 ("train_loss", "mean loss", ".4f"), ("train_runtime", "seconds", ".1f")):
            if key in logs:
                value = logs[key]
                try:
                    parts.append(f"{label} {float(value):{spec}}")
                except (TypeError, ValueError):
                    parts.append(f"{label} {value}")
        self.training_bar.write("  ".join(parts))


class AnswersWhileTraining(TrainerCallback):
    """Every `every` optimizer steps, the eval prompts' greedy answers (XTuner's
    EvaluateChatHook, on any backend): printed, and kept with their step in `during`."""

    def __init__(self, ask: Callable[[str, Any], list[dict]], every: int):
        self.ask = ask
        self.every = every
        self.during: list[dict] = []

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every or not state.is_world_process_zero or model is None:
            return
        answers = self.ask(f"step {state.global_step}", model)
        if answers:
            self.during.append({"step": state.global_step, "answers": answers})


class FrozenLongLivedObjects(TrainerCallback):
    """Python's full garbage collection walks every object the process holds: with torch,
    transformers, a 7B-shaped LoRA model and no compiled layers yet, 552k objects and about 300 ms
    on a 2-core CPU, on whichever step it falls, while an accelerator waits for the host (one
    fell on step 28 of a Qwen2.5-0.5B-shaped run on an H200: 534 ms, where a step takes 190). The
    objects alive once set-up and the first steps (where layers compile) are done are frozen out
    of it (gc.freeze); what training allocates afterwards is collected as usual. `unfreeze`,
    which the runner calls once training ends or fails, gives them back. A process that turned
    the collector off is left alone. One that froze objects before gets them back too (gc has
    no way to unfreeze only some): a Python may start with some frozen (the H200 machine's 3.12
    started with 375), and that must not turn this off."""

    FREEZE_UNTIL_STEP = 3  # compiled layers compile in step 1, and again for a new shape soon after

    def __init__(self) -> None:
        self.active = gc.isenabled()
        self.steps = 0  # this process's steps: a resumed run compiles in its first steps too

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._freeze()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps += 1
        if self.steps <= self.FREEZE_UNTIL_STEP:
            self._freeze()

    def _freeze(self) -> None:
        if self.active:
            gc.collect()  # garbage of set-up is freed, not frozen; after the first freeze this is quick
            gc.freeze()

    def unfreeze(self) -> None:
        if self.active:
            gc.unfreeze()
