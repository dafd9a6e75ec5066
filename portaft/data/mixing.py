"""How many samples each source contributes: `weight:` (a multiple of its size) or `samples:`.

Mixing a little general data into a narrow fine-tune is the usual guard against
catastrophic forgetting. The choice of rows is deterministic in the seed and the
source's position, so the same recipe always trains on the same mix.
"""

from __future__ import annotations

import random


def mixed_rows(available: int, weight: float | None, samples: int | None, seed: int, source_index: int) -> list[int]:
    """Row indices to use from a source with `available` good rows.

    samples=N takes N rows; weight=w takes round(w * available). Below the size of
    the source that is a random subset; above it, every row repeats as often as it
    fits and a random subset fills the rest.
    """
    if samples is None and weight is None:
        return list(range(available))
    wanted = samples if samples is not None else round(weight * available)
    rng = random.Random(f"{seed}:{source_index}")
    whole, rest = divmod(wanted, available) if available else (0, 0)
    rows = list(range(available)) * whole
    rows += sorted(rng.sample(range(available), rest))
    return rows
