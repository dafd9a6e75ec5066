"""Packing: padding-free batches give the same loss as padded batches of the same samples."""

import types

import pytest
import torch

import portaft
import portaft.data
from portaft.data import Seq2SeqCollator
from portaft.data.packing import (FlatteningCollator, TokenBudgetSampler, best_fit_decreasing, default_budget,
                                  flattening_collator, packing_supported)


def test_best_fit_decreasing_fills_bins_within_the_budget_with_every_index_once():
    lengths = [7, 3, 9, 1, 4, 4, 8, 2, 6, 5]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 5  # 49 tokens: five bins of ten is the least possible
    assert best_fit_decreasing(lengths, 10) == bins


def test_sampler_shuffles_batches_per_epoch_deterministically():
    lengths = list(range(1, 41))
    sampler = TokenBudgetSampler(lengths, budget=60, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    again = TokenBudgetSampler(lengths, budget=60, seed=3)
    again.set_epoch(0)
    assert list(again) == epoch0 and epoch1 != epoch0
    assert sorted(map(sorted, epoch0)) == sorted(map(sorted, epoch1)) and len(epoch0) == len(sampler)
    assert TokenBudgetSampler([5, 500], budget=100).budget == 500  # a long sample still fits somewhere
    assert default_budget([10, 20, 30], batch_size=4) == 80


@pytest.mark.parametrize("collator", ["for this transformers", "explicit mask"])
def test_packed_forward_loss_and_gradients_equal_the_padded_batch(recipe_dict, varied_file, tokenizer, tiny_model,
                                                                   collator):
    """Both ways of keeping packed samples apart: position_ids read by transformers
    (>= the masking_utils version), and the explicit block-diagonal mask (older ones)."""
    from transformers import AutoModelForCausalLM

    from portaft.runner.model import apply_lora
    from portaft.compat import model_dtype_kwargs
    from portaft.recipe import LoraSection

    rows = portaft.data.load({**recipe_dict, "data": [{"path": str(varied_file)}]}, tokenizer)
    features = [rows[i] for i in range(len(rows))]
    assert len({len(f["input_ids"]) for f in features}) > 4  # really different lengths
    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model, **model_dtype_kwargs(torch.float32)),
                       LoraSection(r=4, alpha=8, dropout=0.0), False)

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    padded = Seq2SeqCollator(tokenizer)(features)
    packed = (flattening_collator() if collator == "for this transformers" else FlatteningCollator("float32"))(features)
    assert packed["input_ids"].shape[0] == 1
    assert ("attention_mask" in packed) == (collator == "explicit mask" or packing_supported() is not None)
    assert packed["position_ids"][0].tolist() == [p for f in features for p in range(len(f["input_ids"]))]
    assert packed["input_ids"].shape[1] == sum(len(f["input_ids"]) for f in features) < padded["input_ids"].numel()
    padded_loss, padded_grads = loss_and_grads(padded)
    packed_loss, packed_grads = loss_and_grads(packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_cuda_backend_goes_padding_free_but_not_with_device_cpu(recipe_dict):
    from portaft.speed_ups import padding_free

    cuda = portaft.get_backend("cuda")
    assert padding_free in cuda.speed_ups(portaft.load_recipe(recipe_dict))
    assert padding_free not in cuda.speed_ups(portaft.load_recipe({**recipe_dict, "device": "cpu"}))
    packed = portaft.load_recipe({**recipe_dict, "packing": True})
    assert padding_free.applies(types.SimpleNamespace(recipe=packed)) == "packing: true flattens the batches already"
