"""Each step's samples shared out between several processes by their tokens.

Under torchrun each process trains one batch of every step. With flattened (padding-free)
batches a sample costs its tokens, whatever batch it is in, and a step waits for the
process with the most; batches of equal sample counts can differ a lot in tokens. The
balanced_shares speed-up draws batches from `SharedSteps` instead of the Trainer's sampler:
the dataset in a seeded order, cut into batches, and each step's batches (one per process)
shared out again, longest sample first, each to the share with the fewest tokens so far
(the greedy "longest processing time" rule). accelerate then hands process p the p-th of
every N batches, which is its share. A step trains the samples it would have trained
without sharing, so its loss is the same: the Trainer divides by the step's token count
over all processes (`average_tokens_across_devices`).

transformers' own `train_sampling_strategy="batch_rebalance"` balances padded batches
instead: it keeps each process's samples of similar length to spare padding, which
leaves flattened shares of one step unequal in tokens.
"""

from __future__ import annotations

import math
import random
from typing import Iterator


def shares_by_tokens(batches: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """The samples of `batches` (one step's, one batch per process) in as many shares of
    nearly equal tokens: longest first, each to the share with the fewest tokens (ties: the
    lower share), each share in the order its samples had in the step. Where that leaves
    the busiest share no lighter than the busiest batch (the greedy rule is not optimal),
    the batches as they were."""
    step = [index for batch in batches for index in batch]
    position = {index: at for at, index in enumerate(step)}
    shares: list[list[int]] = [[] for _ in batches]
    tokens = [0] * len(batches)
    for index in sorted(step, key=lambda i: (-lengths[i], position[i])):
        lightest = tokens.index(min(tokens))
        shares[lightest].append(index)
        tokens[lightest] += lengths[index]
    if max(tokens) >= max(sum(lengths[i] for i in batch) for batch in batches):
        return [list(batch) for batch in batches]
    return [sorted(share, key=position.__getitem__) for share in shares]


class SharedSteps:
    """A batch sampler over every process's batches: each step's `processes` batches of
    `batch_size` samples, shared out by tokens, one after the other. The order is seeded and
    changes each epoch, the same on every process; a last step short of batches is filled
    with the epoch's first batches (as accelerate fills it), so every step has one per process."""

    def __init__(self, lengths: list[int], batch_size: int, processes: int, seed: int = 42):
        self.lengths = lengths
        self.batch_size = None  # batches differ in size: accelerate must not expect a fixed one
        self.per_batch, self.processes, self.seed = batch_size, processes, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.per_batch) / self.processes) * self.processes

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        self.epoch += 1  # where the loader does not pass set_epoch on (several processes)
        batches = [order[start:start + self.per_batch] for start in range(0, len(order), self.per_batch)]
        drawn = len(batches)
        batches += [batches[i % drawn] for i in range(len(self) - drawn)]
        for start in range(0, len(batches), self.processes):
            yield from shares_by_tokens(batches[start:start + self.processes], self.lengths)
