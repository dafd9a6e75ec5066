"""Several processes' shares of a step, by tokens (portaft/data/shares.py), without processes:
accelerate's batch sampler shard for each process index, as each process builds it."""

from types import SimpleNamespace

import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, SequentialSampler

from portaft.data.shares import share_steps_by_tokens, shares_by_tokens


def test_a_step_is_shared_out_longest_first_to_the_lightest_share_keeping_each_shares_order():
    lengths = [100, 90, 10, 10, 10, 10, 10, 10]
    shares = shares_by_tokens([[0, 1, 2, 3], [4, 5, 6, 7]], lengths)
    assert shares == [[0, 3, 5, 7], [1, 2, 4, 6]]  # 130 and 120 tokens against 210 and 40
    assert shares_by_tokens([[0, 1], [2, 3]], [3, 3, 2, 2]) == [[0, 2], [1, 3]]  # 5 and 5 against 6 and 4
    # where the greedy rule is no better (7 and 4 here against 6 and 6), the batches stay as they were
    assert shares_by_tokens([[0, 1], [2, 3, 4]], [3, 3, 2, 2, 2]) == [[0, 1], [2, 3, 4]]


def _shards(samples: int, batch: int, processes: int, lengths: list[int] | None):
    """Each process's batches, as its data loader yields them: accelerate's own shares, or
    (with `lengths`) shared out by tokens."""
    every = []
    for process in range(processes):
        shard = BatchSamplerShard(BatchSampler(SequentialSampler(range(samples)), batch, drop_last=False),
                                  num_processes=processes, process_index=process)
        if lengths is not None:
            trainer = SimpleNamespace(get_train_dataloader=lambda shard=shard: SimpleNamespace(batch_sampler=shard))
            share_steps_by_tokens(trainer, lengths)
            shard = trainer.get_train_dataloader().batch_sampler
        every.append((list(shard), len(shard)))
    return every


@pytest.mark.parametrize("samples", [32, 27, 5])  # whole steps; a last step accelerate fills from the start; fewer
def test_every_step_trains_the_samples_it_trained_before_with_closer_token_counts(samples):
    """The same samples in every step as accelerate's shares (the last step too, which it fills
    by starting over), as many steps as the loader says, and the busiest process's tokens
    no more than before."""
    lengths = [(7 * i) % 23 + 1 + 40 * (i % 5 == 0) for i in range(samples)]
    before, after = _shards(samples, 4, 2, None), _shards(samples, 4, 2, lengths)
    for (batches, length), (shared, shared_length) in zip(before, after):
        assert len(shared) == shared_length == length == len(batches)
    busiest_before = busiest_after = 0
    for step, shared in zip(zip(*(b for b, _ in before)), zip(*(s for s, _ in after))):
        assert sorted(i for batch in step for i in batch) == sorted(i for share in shared for i in share)
        tokens_before = [sum(lengths[i] for i in batch) for batch in step]
        tokens_after = [sum(lengths[i] for i in share) for share in shared]
        assert max(tokens_after) <= max(tokens_before)
        busiest_before += max(tokens_before)
        busiest_after += max(tokens_after)
    if samples == 32:
        assert busiest_after < busiest_before  # this mix of lengths is uneven in accelerate's shares


def test_one_process_keeps_its_batches():
    """No shard when one process trains: the loader is left as it is."""
    loader = SimpleNamespace(batch_sampler=BatchSampler(SequentialSampler(range(6)), 2, drop_last=False))
    trainer = SimpleNamespace(get_train_dataloader=lambda: loader)
    share_steps_by_tokens(trainer, [1] * 6)
    assert list(trainer.get_train_dataloader().batch_sampler) == [[0, 1], [2, 3], [4, 5]]
