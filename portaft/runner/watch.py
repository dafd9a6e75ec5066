"""Step 6, watched: what portaft adds to the backend's Trainer while it trains.

Readable progress lines, the plugins' trackers, checkpoints marked complete
(checkpoints.py), a stop at the first NaN or infinite loss, and the eval prompts
answered before, during and after training. Everything goes through the Trainer's
callbacks (portaft.protocols.Trainer) and a forward hook on the model; nothing of the
Trainer is replaced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transformers.trainer_callback import ProgressCallback, TrainerCallback

from portaft.errors import UserError

from .checkpoints import CompleteCheckpoints, checkpoint_folders, is_complete
from .livelog import LOG_FILE, LiveLog, current_warnings


class ReadableProgress(ProgressCallback):
    """transformers' progress bar (steps, elapsed, ETA) with the tokens/s of the live log,
    and log lines written for people instead of dicts."""

    live: LiveLog | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        speed = (self.live.latest if self.live else {}).get("tokens_per_s")
        if speed is not None and "loss" in logs:
            self.training_bar.set_postfix_str(f"{speed:,.0f} tokens/s", refresh=False)
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key, label, spec in (("loss", "loss", ".4f"), ("eval_loss", "eval loss", ".4f"),
                                 ("grad_norm", "grad_norm", ".3f"),
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


class LossWatch(TrainerCallback):
    """Stop a run whose loss became NaN or infinite before any step from then on is saved:
    the last checkpoint written stays the last good one.

    Every micro-batch's loss is seen where the model returns it: a forward hook on the
    model being trained (torch's `register_forward_hook`), so any backend's Trainer keeps
    its code. Reading the loss waits for the device, so it is read only at a step that
    logs, saves, evaluates or ends the run, where the Trainer waits anyway: the steps
    between queue up on the device without a sync. The step named in the message is the
    first bad one, kept on the device until then."""

    def __init__(self, model: Any) -> None:
        self.bad_step: int | None = None
        self.bad_value: float | None = None
        self._worst: Any = None  # since the last read: the first non-finite loss, else the latest
        self._bad_at: Any = None  # ... and the step it came from (-1: all finite)
        self._state: Any = None  # the Trainer's state, from on_train_begin: which step a loss belongs to
        self._hook = model.register_forward_hook(self._seen)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._state = state

    def _seen(self, module: Any, inputs: Any, output: Any) -> None:
        """A training forward's loss (not evaluation's, not generation's); no sync."""
        loss = output.get("loss") if isinstance(output, dict) else None
        if module.training and loss is not None and self._state is not None and self.bad_step is None:
            self._remember(loss, self._state.global_step + 1)

    def close(self) -> None:
        self._hook.remove()

    def _remember(self, loss: Any, step: int) -> None:
        """Device tensors only, no sync."""
        import torch

        value = loss.detach().float().sum()
        at = torch.where(torch.isfinite(value), -1.0, float(step))
        if self._worst is None:
            self._worst, self._bad_at = value, at
            return
        earlier = self._bad_at >= 0
        self._worst = torch.where(earlier, self._worst, value)
        self._bad_at = torch.where(earlier, self._bad_at, at)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ends = state.max_steps > 0 and state.global_step >= state.max_steps
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop or ends:
            self._read(control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._read(control)  # save_strategy: epoch would save here

    def _read(self, control: Any) -> None:
        if self._worst is not None and self.bad_step is None:
            import torch

            value, at = torch.stack([self._worst, self._bad_at]).tolist()  # one sync for both
            self._worst = self._bad_at = None
            if at >= 0:
                self.bad_step, self.bad_value = int(at), value
        if self.bad_step is not None:
            control.should_save = False  # the weights are not good since bad_step
            control.should_training_stop = True


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; training stopped at the last good checkpoint."""

    exit_code = 4


@dataclass
class Watching:
    loss: LossWatch
    during: AnswersWhileTraining | None
    ask: Callable[[str, Any], list[dict]]  # (when, model) -> the eval prompts' answers, printed
    live: LiveLog


def attach(trainer: Any, resolved: Any, world: Any, template: str, tokenizer: Any, extra: list[Any],
           say: Callable[[str], None]) -> Watching:
    """Add portaft's callbacks to `trainer`, then `extra` (the speed-ups')."""
    recipe = resolved.recipe
    live = LiveLog(world.output_dir / LOG_FILE, trainer.model, current_warnings())
    trainer.add_callback(live)  # before the progress bar, which shows its tokens/s
    progress = ReadableProgress()
    progress.live = live
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress)
    for callback in resolved.tracking.callbacks:  # plugins' (register_callbacks)
        trainer.add_callback(callback)
    trainer.add_callback(CompleteCheckpoints(world.identity, world.keep))
    loss = LossWatch(trainer.model)
    trainer.add_callback(loss)
    ask = functools.partial(answer_and_show, tokenizer=tokenizer, template=template, system=recipe.system,
                            prompts=recipe.eval_prompts if world.first else [], device=world.args.device, say=say,
                            max_new_tokens=recipe.eval_max_new_tokens)
    during = AnswersWhileTraining(ask, recipe.eval_every) if recipe.eval_every else None
    for callback in ([during] if during else []) + extra:
        trainer.add_callback(callback)
    return Watching(loss, during, ask, live)


def answer_and_show(when: str, model: Any, *, tokenizer: Any, template: str, system: str | None,
                    prompts: list, device: Any, say: Callable[[str], None], max_new_tokens: int = 48) -> list[dict]:
    from portaft.samples import answer_prompts

    if not prompts:
        return []
    model.to(device)  # before training the Trainer has not placed the model yet
    answers = answer_prompts(model, tokenizer, template, prompts, max_new_tokens=max_new_tokens, system=system)
    for item in answers:
        say(f"{when}: Q: {item['prompt']}\n         A: {item['answer']}")
    return answers


def diverged(watch: LossWatch, output_dir: Path) -> TrainingDiverged:
    good = [(s, p) for s, p in checkpoint_folders(output_dir) if is_complete(p)]
    kept = (f"The last good checkpoint is {good[-1][1]} (step {good[-1][0]}); no adapter was saved from the "
            "bad weights." if good else "No checkpoint was written before it, so nothing was saved.")
    return TrainingDiverged(
        f"train: the loss became {watch.bad_value} at step {watch.bad_step}; training stopped. {kept}\n"
        "Lower train.learning_rate, raise train.warmup_steps or lower train.max_grad_norm; with train.fp16 "
        "try bf16 (fp16 overflows). Check the data for empty or huge samples (portaft preview). A changed "
        "recipe cannot resume this run: set resume: false and overwrite: true to start over."
    )
