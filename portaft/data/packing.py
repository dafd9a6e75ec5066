"""Padding-free training: batches filled to a token budget, flattened into one row.

transformers' `DataCollatorWithFlattening` concatenates a batch's samples into one
row with `position_ids` restarting at 0 per sample and no attention mask; the
model's mask code (transformers' `masking_utils.find_packed_sequence_indices`) turns
those positions into a block-diagonal mask, so no sample attends to another, and
the first label of every sample is -100 so no sample predicts the next one's
first token. The loss then equals the padded batch's (tests/unit/test_packing.py).

What decides the batches is `TokenBudgetSampler`: samples are packed once, longest
first, each into the fullest batch it still fits (best fit decreasing), into batches
of at most `budget` tokens; each epoch shuffles the order of the batches with the
seed, the same on every process of a distributed run.
"""

from __future__ import annotations

import bisect
import random
from typing import Any, Iterator


def packing_supported() -> str | None:
    """None when the installed transformers honours packed position_ids, else why not."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        import transformers

        return (f"transformers {transformers.__version__} does not build block-diagonal masks from packed "
                "position_ids, so packed samples would attend to each other; upgrade transformers")
    return None


class TokenBudgetSampler:
    """Batches of dataset indices, each at most `budget` tokens in total."""

    def __init__(self, lengths: list[int], budget: int, seed: int = 42):
        self.budget = max(budget, max(lengths))  # a sample longer than the budget gets a batch of its own
        self.seed = seed
        self.epoch = 0
        self.batches = best_fit_decreasing(lengths, self.budget)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        self.epoch += 1  # for trainers that never call set_epoch
        for index in order:
            yield list(self.batches[index])


def best_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most `budget`: longest first, each into the
    fullest bin it still fits (best fit decreasing). Ties keep dataset order, so the
    result is deterministic; a sorted list of free room keeps it O(n log n)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted
    for index in order:
        size = lengths[index]
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, number = free.pop(at)
        else:
            room, number = budget, len(bins)
            bins.append([])
        bins[number].append(index)
        bisect.insort(free, (room - size, number))
    return [sorted(b) for b in bins]


def default_budget(lengths: list[int], batch_size: int) -> int:
    """Tokens per batch when the recipe sets none: batch size x mean sample length, so a
    step sees as many samples on average as without packing, only without padding."""
    return max(1, round(batch_size * sum(lengths) / len(lengths)))


def resolve_packing(recipe: Any) -> list[str]:
    """Where transformers cannot read packed position_ids (4.45, the openMind stack),
    packing still works: each batch carries an explicit block-diagonal mask. Say so."""
    reason = packing_supported() if recipe.packing else None
    if reason is None:
        return []
    return [f"packing: {reason.split(', so ')[0]}, so each packed batch carries an explicit block-diagonal "
            "attention mask (its memory grows with the square of the batch's tokens)"]


def packed_batches(lengths: list[int], recipe: Any) -> tuple[TokenBudgetSampler, Any, str]:
    """(sampler, collator, note) for a packed run of samples with these lengths."""
    batch_size = int(recipe.train.get("per_device_train_batch_size", 8))
    budget = recipe.packing_tokens or default_budget(lengths, batch_size)
    sampler = TokenBudgetSampler(lengths, budget, seed=int(recipe.train.get("seed", 42)))
    how = "packing_tokens" if recipe.packing_tokens else f"per_device_train_batch_size {batch_size} x mean length"
    fill = sum(lengths) / (len(sampler) * sampler.budget)
    note = (f"packing: {len(lengths)} samples in {len(sampler)} padding-free batches of at most "
            f"{sampler.budget} tokens ({how}), {fill:.0%} full")
    return sampler, flattening_collator(recipe.model.dtype), note


class FlatteningCollator:
    """transformers' DataCollatorWithFlattening, plus `use_cache=False` in every batch:
    transformers only reads packed position_ids as sequence boundaries when no KV
    cache is passed, and a model whose config says use_cache would make one. Where
    transformers reads them, the batch also carries the samples' bounds
    (`cu_seq_lens_q/k`, `max_length_q/k`), which varlen attention kernels take as they
    are and every other attention ignores.

    With `explicit_mask_dtype` (transformers without packed position_ids support) the
    batch also gets the block-diagonal causal mask itself, as the 4D additive mask
    transformers accepts: 0 where a token may attend, the dtype's minimum elsewhere."""

    def __init__(self, explicit_mask_dtype: str | None = None) -> None:
        from transformers import DataCollatorWithFlattening

        bounds = {"return_flash_attn_kwargs": True} if explicit_mask_dtype is None else {}
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100, **bounds)
        self.mask_dtype = explicit_mask_dtype

    def __call__(self, features: list[dict]) -> dict:
        batch = {**self.flatten(features), "use_cache": False}
        if self.mask_dtype is not None:
            batch["attention_mask"] = block_diagonal_mask(batch["position_ids"], self.mask_dtype)
        return batch


def block_diagonal_mask(position_ids: Any, dtype: str) -> Any:
    """[1, 1, L, L] additive mask: token i sees token j when both are in the same sample
    (position ids restart at 0 per sample) and j <= i."""
    import torch

    sample = torch.cumsum(position_ids[0] == 0, dim=0)
    allowed = (sample[:, None] == sample[None, :]) & torch.ones(len(sample), len(sample), dtype=torch.bool).tril()
    torch_dtype = getattr(torch, dtype if dtype != "auto" else "float32")
    mask = torch.zeros(allowed.shape, dtype=torch_dtype).masked_fill(~allowed, torch.finfo(torch_dtype).min)
    return mask[None, None]


def flattening_collator(dtype: str = "float32") -> Any:
    """The collator for packed batches under the installed transformers."""
    return FlatteningCollator(None if packing_supported() is None else dtype)
