"""Each step's samples shared out between several processes by their tokens.

Under torchrun the Trainer's data loader (accelerate's `BatchSamplerShard`) gives process
p the p-th of every N consecutive batches: each process the same number of samples, but
not the same number of tokens, and a step waits for the process with the most. With
flattened (padding-free) batches a sample costs its tokens, whatever batch it is in, so
the same samples can be shared out again, step by step: longest first, each to the
process with the fewest tokens so far (the greedy "longest processing time" rule). The
step trains the very samples it trained before, so its loss is the same: the Trainer
divides by the step's token count over all processes (`average_tokens_across_devices`).

transformers' own `train_sampling_strategy="batch_rebalance"` balances padded batches
instead: it keeps each process's samples of similar length to spare padding, which
leaves flattened shares of one step unequal in tokens (a process with the step's few
long samples has more tokens than one with its many short ones).
"""

from __future__ import annotations

import copy
import types
from typing import Any, Iterator


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


def _balanced_batches(self: Any) -> Iterator[list[int]]:
    """`BatchSamplerShard.__iter__` for one process, each step shared out by tokens: the
    batches every process would get (accelerate's own rules, including how the last step
    is filled), from one pass over the shared order, then this process's share of each step."""
    parent = type(self).__mro__[1]
    if self.split_batches or not self.even_batches or self.num_processes == 1:
        yield from parent.__iter__(self)  # uneven or split batches: accelerate's own shares
        return
    epoch = list(self.batch_sampler)  # the order every process draws (one pass: the sampler's epoch advances once)
    views = []
    for process in range(self.num_processes):
        view = copy.copy(self)
        view.__class__ = parent
        # copies: accelerate fills the last batch in place, which another view must not see
        view.batch_sampler, view.process_index = [list(batch) for batch in epoch], process
        views.append(list(view))
    for step in zip(*views):
        yield shares_by_tokens(list(step), self.lengths)[self.process_index]


def share_steps_by_tokens(trainer: Any, lengths: list[int]) -> None:
    """Make `trainer`'s training batches, under several processes, each step's samples shared
    out by tokens (`lengths`: each dataset row's). Trainer.get_train_dataloader is replaced
    on the instance, as data.packing does; the loader accelerate prepared is kept, only its
    batch sampler's class gains the sharing."""
    build = trainer.get_train_dataloader

    def get_train_dataloader(self: Any) -> Any:
        loader = build()
        shard = loader.batch_sampler
        from accelerate.data_loader import BatchSamplerShard

        if isinstance(shard, BatchSamplerShard):  # one process: no shard, nothing to share
            shard.__class__ = type("BatchSamplerShardByTokens", (type(shard),), {"__iter__": _balanced_batches})
            shard.lengths = lengths
        return loader

    trainer.get_train_dataloader = types.MethodType(get_train_dataloader, trainer)
