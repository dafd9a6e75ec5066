"""Exactly what portaft's core calls: on a backend, on the training arguments and the trainer
it returns, and on a speed-up. `portaft.backends.TransformersBackend` has all of it; a
backend written from scratch must too (plugins refuse one that lacks a member)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from .backends.device import Device
    from .recipe import Recipe
    from .speed_ups import Training


@runtime_checkable
class Backend(Protocol):
    """A place to train: its libraries (Auto classes, Trainer) and its hardware."""

    name: str  # what recipes and --backend call it
    device_type: str  # the torch device type it trains on, e.g. cpu, cuda, npu
    priority: int  # `backend: auto` picks the available backend with the highest
    distributed_backend: str  # torch.distributed backend: gloo, nccl, hccl

    def is_available(self) -> bool: ...

    def unavailable_reason(self) -> str | None:
        """Why is_available() is False, in words a user can act on; None if available."""

    def resolve(self, recipe: Recipe) -> tuple[Recipe, list[str]]:
        """The recipe this backend will really run (a copy), plus one note per change made."""

    def device_for(self, recipe: Recipe) -> Device:
        """What the run's device is: this backend's hardware, or the CPU's under `device: cpu`."""

    def speed_ups(self, recipe: Recipe) -> Sequence[SpeedUp]:
        """The speed-ups this backend offers for the run, in the order they are tried."""

    def load_tokenizer(self, recipe: Recipe) -> Any: ...

    def load_model(self, recipe: Recipe) -> Any:
        """The base model, on this backend's device, without any adapter."""

    def training_arguments(self, **kwargs: Any) -> TrainingArguments:
        """The library's TrainingArguments from the effective recipe's `train:` keys; this
        sets up the processes (torch.distributed) and the device."""

    def collator(self, tokenizer: Any) -> Any:
        """The backend library's seq2seq collator, or None to use portaft's own."""

    def trainer(self, *, model: Any, args: TrainingArguments, train_dataset: Any, data_collator: Any,
                tokenizer: Any, batch_sampler: Any = None, eval_dataset: Any = None) -> Trainer:
        """The library's Trainer. `batch_sampler` (packing, batches shared out by tokens):
        the Trainer must draw its training batches from it, through `data_collator`.
        `eval_dataset` (val_size, eval_data:) is passed only when the recipe has eval data."""


class TrainingArguments(Protocol):
    device: Any  # the torch device this process trains on

    def main_process_first(self, desc: str = ...) -> AbstractContextManager[Any]:
        """The first process runs the block before the others do (they then read its cache)."""


class TrainState(Protocol):
    global_step: int
    log_history: list[dict]


class Trainer(Protocol):
    model: Any  # the model being trained (portaft's, after the adapter)
    state: TrainState

    def add_callback(self, callback: Any) -> None:
        """A transformers TrainerCallback (class or instance): on_train_begin, on_step_end, on_log, on_save..."""

    def remove_callback(self, callback: Any) -> None: ...

    def train(self, resume_from_checkpoint: str | None = None) -> Any:
        """Train; the result has `metrics` (train_loss, train_runtime, ...)."""

    def save_model(self, output_dir: str | None = None) -> None: ...

    def is_world_process_zero(self) -> bool: ...


class SpeedUp(Protocol):
    """One speed-up (portaft/speed_ups/): the same loss, less time or memory."""

    NAME: str
    STAGE: str  # "settings": changes the recipe's training settings, before anything loads; "model": after

    def applies(self, training: Training) -> str | None:
        """None when it applies to this run, else why not (for the run's notes)."""

    def apply(self, training: Training) -> str:
        """Make the change; return what was done, one line for the run's notes."""


BACKEND_MEMBERS = ("name", "device_type", "priority", "distributed_backend", "is_available",
                   "unavailable_reason", "resolve", "device_for", "speed_ups", "load_tokenizer", "load_model",
                   "training_arguments", "collator", "trainer")
