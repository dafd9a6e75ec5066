"""How the Trainer draws its batches: padded, flattened (padding-free), packed to a token
budget, or flattened and shared out between processes by tokens.

Padded batches use the backend's seq2seq collator, or portaft's own where its library has
none (data/collator.py, equal to transformers'). Flattened batches use portaft's
flattening collator (data/packing.py). Packed and shared batches come from portaft's
batch sampler, which the backend's Trainer draws from (`Backend.trainer(batch_sampler=)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portaft.data import Seq2SeqCollator, packing
from portaft.data.shares import SharedSteps


@dataclass
class Batches:
    collator: Any
    sampler: Any = None  # a batch sampler the Trainer draws from; None: the Trainer's own
    note: str | None = None


def choose_batches(resolved: Any, tokenizer: Any, lengths: list[int], training: Any) -> Batches:
    """`training`: the plan's speed-ups' verdict (flattened, share_by_tokens)."""
    recipe = resolved.recipe
    if recipe.packing:
        sampler, collator, note = packing.packed_batches(lengths, recipe)
        return Batches(collator, sampler, note)
    if training.flattened:
        sampler = None
        if training.share_by_tokens:
            sampler = SharedSteps(lengths, int(recipe.train.get("per_device_train_batch_size", 8)),
                                  resolved.processes, seed=int(recipe.train.get("seed", 42)))
        return Batches(packing.flattening_collator(), sampler)
    return Batches(resolved.backend.collator(tokenizer) or Seq2SeqCollator(tokenizer))
