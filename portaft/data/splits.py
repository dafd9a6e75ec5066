"""Evaluation data: a share of each training source held out (`val_size`, LLaMA-Factory's
name), or sources of its own (`eval_data:`).

`val_size` is a fraction of a source's usable samples (0.1) or a count (200); a source's
own `val_size` replaces the recipe's. Which samples are held out is fixed by train.seed
and the source's position, like mixing (mixing.py): the same recipe always evaluates on
the same samples, and never trains on them. The split comes before weight/samples, so
repeating a source never repeats a held-out sample into training.
"""

from __future__ import annotations

import random

from portaft.errors import UserError


def held_out_count(available: int, val_size: float | int | None) -> int:
    if not val_size:
        return 0
    if isinstance(val_size, float) and val_size < 1:
        return max(1, round(available * val_size))
    return int(val_size)


def split_off(available: int, val_size: float | int | None, seed: int, source_index: int,
              where: str) -> tuple[list[int], list[int]]:
    """(rows to train on, rows held out) of a source with `available` usable rows."""
    count = held_out_count(available, val_size)
    if count == 0:
        return list(range(available)), []
    if count >= available:
        raise UserError(f"{where}: val_size {val_size:g} holds out {count} of the source's {available} usable "
                        "samples, leaving none to train on. Give a smaller fraction or count.")
    held = set(random.Random(f"{seed}:{source_index}:eval").sample(range(available), count))
    return [i for i in range(available) if i not in held], sorted(held)


def val_size_of(recipe, source) -> float | int | None:
    return source.val_size if source.val_size is not None else recipe.val_size
