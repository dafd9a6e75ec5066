"""Several processes' shares of a step, by tokens (portaft/data/shares.py), without processes:
the sampler every process builds, and accelerate's shard of it for each process index."""

import pytest
from accelerate.data_loader import BatchSamplerShard

from portaft.data import shares
from portaft.data.shares import SharedSteps, shares_by_tokens


def test_a_step_is_shared_out_longest_first_to_the_lightest_share_keeping_each_shares_order():
    lengths = [100, 90, 10, 10, 10, 10, 10, 10]
    shared = shares_by_tokens([[0, 1, 2, 3], [4, 5, 6, 7]], lengths)
    assert shared == [[0, 3, 5, 7], [1, 2, 4, 6]]  # 130 and 120 tokens against 210 and 40
    assert shares_by_tokens([[0, 1], [2, 3]], [3, 3, 2, 2]) == [[0, 2], [1, 3]]  # 5 and 5 against 6 and 4
    # where the greedy rule is no better (7 and 4 here against 6 and 6), the batches stay as they were
    assert shares_by_tokens([[0, 1], [2, 3, 4]], [3, 3, 2, 2, 2]) == [[0, 1], [2, 3, 4]]


def _per_process(sampler: SharedSteps, processes: int) -> list[list[list[int]]]:
    """Each process's batches of one epoch, as accelerate's shard of the sampler yields them.
    The sampler yields whole steps, so accelerate never fills one: even_batches (what the
    Trainer uses, where this accelerate takes batches of varying sizes with it) or not, the
    same shards."""
    every = []
    for process in range(processes):
        sampler.set_epoch(0)
        shard = BatchSamplerShard(sampler, num_processes=processes, process_index=process, even_batches=False)
        every.append(list(shard))
        assert len(every[-1]) == len(shard)
        try:
            even = BatchSamplerShard(sampler, num_processes=processes, process_index=process)
        except ValueError:  # accelerate 1.0 (the openMind stack) takes batches of varying sizes only without it
            continue
        sampler.set_epoch(0)
        assert list(even) == every[-1] and len(even) == len(shard)
    return every


@pytest.mark.parametrize("samples", [32, 27, 5])  # whole steps; a last step filled from the start; fewer
def test_every_step_trains_the_samples_drawn_for_it_with_closer_token_counts(samples, monkeypatch):
    """With and without sharing: the same samples in every step, as many steps on every
    process, the last step filled from the epoch's first batches, and the busiest process's
    tokens no more than the drawn batches'."""
    lengths = [(7 * i) % 23 + 1 + 40 * (i % 5 == 0) for i in range(samples)]
    after = _per_process(SharedSteps(lengths, 4, 2, seed=3), 2)
    monkeypatch.setattr(shares, "shares_by_tokens", lambda batches, lengths: [list(b) for b in batches])
    before = _per_process(SharedSteps(lengths, 4, 2, seed=3), 2)
    assert len(before[0]) == len(before[1]) == len(after[0]) == len(after[1]) == -(-samples // 8)
    assert {i for batches in before for batch in batches for i in batch} == set(range(samples))
    busiest_before = busiest_after = 0
    for step, shared in zip(zip(*before), zip(*after)):
        assert sorted(i for batch in step for i in batch) == sorted(i for share in shared for i in share)
        tokens_before = [sum(lengths[i] for i in batch) for batch in step]
        tokens_after = [sum(lengths[i] for i in share) for share in shared]
        assert max(tokens_after) <= max(tokens_before)
        busiest_before += max(tokens_before)
        busiest_after += max(tokens_after)
    if samples == 32:
        assert busiest_after < busiest_before  # this mix of lengths is uneven in the drawn batches


def test_the_order_is_the_seeds_and_changes_each_epoch():
    lengths = list(range(1, 41))
    first, again = SharedSteps(lengths, 4, 2, seed=5), SharedSteps(lengths, 4, 2, seed=5)
    epoch_0 = list(first)
    assert epoch_0 == list(again)  # every process draws the same
    assert list(first) != epoch_0  # the next epoch, in another order
    first.set_epoch(0)
    assert list(first) == epoch_0  # a resumed run starts its epoch where it was
