"""Packing: padding-free batches give the same loss as padded batches of the same samples."""

import json

import pytest
import torch

import portaft
import portaft.data
from portaft.data import Seq2SeqCollator
from portaft.data.packing import (FlatteningCollator, TokenBudgetSampler, best_fit_decreasing, default_budget,
                                  flattening_collator, packing_supported)


@pytest.fixture
def varied_file(tmp_path):
    path = tmp_path / "varied.jsonl"
    rows = [{"conversation": [{"input": "问题" * (1 + i % 5), "output": "回答" * (1 + (i * 3) % 7)}]
             + [{"input": "再问", "output": "再答" * (1 + i % 3)}] * (i % 2)} for i in range(12)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


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

    from portaft.adapters import apply_lora
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


def test_a_packed_run_logs_the_same_losses_as_padding_the_same_batches(recipe_dict, varied_file, monkeypatch):
    recipe = {**recipe_dict, "data": [{"path": str(varied_file)}], "packing": True,
              "train": {**recipe_dict["train"], "max_steps": 5, "save_strategy": "no"}}
    packed = portaft.run({**recipe, "train": {**recipe["train"], "output_dir": recipe["train"]["output_dir"] + "-p"}},
                         backend="cpu", echo=lambda _: None)
    # the same run with the same token-budget batches, padded instead of flattened
    monkeypatch.setattr("portaft.data.packing.flattening_collator", lambda *_: Seq2SeqCollator(_tokenizer_of(recipe)))
    padded = portaft.run(recipe, backend="cpu", echo=lambda _: None)
    packed_losses = [e["loss"] for e in packed.log_history if "loss" in e]
    padded_losses = [e["loss"] for e in padded.log_history if "loss" in e]
    assert len(packed_losses) == 5
    assert packed_losses == pytest.approx(padded_losses, rel=1e-5)
    assert any(n.startswith("packing: 12 samples in ") for n in packed.notes)


def _tokenizer_of(recipe):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(recipe["model"]["name_or_path"])
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.mark.skipif(packing_supported() is None, reason="this transformers reads packed position_ids itself")
def test_where_transformers_cannot_read_packed_positions_a_note_says_masks_are_explicit(recipe_dict):
    result = portaft.run({**recipe_dict, "packing": True, "train": {**recipe_dict["train"], "max_steps": 1}},
                         backend="cpu", echo=lambda _: None)
    assert any("each packed batch carries an explicit block-diagonal attention mask" in n for n in result.notes)


def test_padding_free_batches_train_exactly_like_padded_ones(recipe_dict, monkeypatch):
    """What the cuda backend does by default: the same samples per batch, flattened."""
    from portaft.backends._transformers import TransformersBackend
    from portaft.data.packing import packing_supported

    if packing_supported() is not None:
        pytest.skip("this transformers cannot read packed position_ids: padding-free stays off")
    recipe_dict["train"]["max_steps"] = 5
    padded = portaft.run({**recipe_dict, "train": {**recipe_dict["train"], "output_dir": recipe_dict["train"]["output_dir"] + "-padded"}},
                         backend="cpu", echo=lambda _: None)
    monkeypatch.setattr(TransformersBackend, "padding_free", lambda self, recipe: True)
    lines = []
    flat = portaft.run(recipe_dict, backend="cpu", echo=lines.append)
    assert any("batches: padding-free" in line for line in lines)
    expected = [e["loss"] for e in padded.log_history if "loss" in e]
    got = [e["loss"] for e in flat.log_history if "loss" in e]
    assert len(got) == 5 and got == pytest.approx(expected, rel=1e-5)


def test_the_cuda_backend_goes_padding_free_but_not_with_device_cpu(recipe_dict, monkeypatch):
    from portaft.backends import cuda
    from portaft.data.packing import packing_supported

    monkeypatch.setattr(cuda.CUDA, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cuda.CUDA, "supports_bf16", lambda: True)
    backend = portaft.get_backend("cuda")
    effective, _ = backend.resolve(portaft.load_recipe(recipe_dict))
    assert backend.padding_free(effective) == (packing_supported() is None)
    on_cpu, _ = backend.resolve(portaft.load_recipe({**recipe_dict, "device": "cpu"}))
    assert not backend.padding_free(on_cpu)
    packed, _ = backend.resolve(portaft.load_recipe({**recipe_dict, "packing": True}))
    assert not backend.padding_free(packed)  # packing has its own batches
