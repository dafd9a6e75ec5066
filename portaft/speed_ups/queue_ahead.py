"""The host queues the next step while the accelerator still runs this one (stage settings).

Two TrainingArguments defaults make the host wait for the device every micro-batch; they
are changed where the recipe leaves them unset. No faster on the 7B shape at 4k, where the
GPU is busy 92% of a step anyway; on for cuda since its measured numbers
(docs/performance.md) were taken with it.
"""

from __future__ import annotations

from typing import Any

NAME = "queue_ahead"
STAGE = "settings"


def applies(training: Any) -> str | None:
    train = training.recipe.train
    if "logging_nan_inf_filter" in train and not _non_blocking_copies_unset(train):
        return "the recipe sets logging_nan_inf_filter, and accelerator_config or unpinned memory"
    return None


def apply(training: Any) -> str:
    train = training.recipe.train
    changes = []
    if "logging_nan_inf_filter" not in train:
        train["logging_nan_inf_filter"] = False
        changes.append("train.logging_nan_inf_filter: unset -> false (its check of every micro-batch's loss waits "
                       "for the GPU; portaft stops a run whose loss becomes NaN or infinite, before that step is "
                       "saved)")
    if _non_blocking_copies_unset(train):
        train["accelerator_config"] = {"non_blocking": True}
        changes.append("train.accelerator_config: unset -> {non_blocking: true} (each batch is copied from pinned "
                       "memory without waiting for the GPU to finish the step before)")
    return "; ".join(changes)


def _non_blocking_copies_unset(train: dict) -> bool:
    return "accelerator_config" not in train and train.get("dataloader_pin_memory", True)
