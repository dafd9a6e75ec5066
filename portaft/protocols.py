"""The small surfaces the core calls. Backends satisfy them structurally."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .recipe import Recipe


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
        """The recipe this backend will really run, plus one note per change made."""

    def load_tokenizer(self, recipe: Recipe) -> Any: ...

    def load_model(self, recipe: Recipe) -> Any:
        """The base model, on this backend's device, without any adapter."""

    def training_arguments(self, **kwargs: Any) -> Any: ...

    def trainer(self, **kwargs: Any) -> Trainer: ...

    def collator(self, tokenizer: Any) -> Collator | None:
        """The backend library's seq2seq collator, or None to use portaft's own."""

    # Optional: `padding_free(recipe) -> bool`. True makes portaft flatten each batch's
    # samples into one row (no pad tokens; the same loss). Absent means padded batches.
    # Optional: `speed_up(model, recipe) -> list[str]`, called with the model the Trainer
    # will train (the adapter applied): instance-only changes that train faster with the
    # same loss (attention kernels, a fused loss), one note each for the run's record.


class Trainer(Protocol):
    state: Any  # .log_history, .global_step

    def train(self, **kwargs: Any) -> Any: ...

    def save_model(self, output_dir: str | None = None) -> None: ...


class Collator(Protocol):
    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]: ...


BACKEND_MEMBERS = ("name", "device_type", "priority", "distributed_backend", "is_available",
                   "unavailable_reason", "resolve", "load_tokenizer", "load_model",
                   "training_arguments", "trainer", "collator")
