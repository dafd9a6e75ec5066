"""The cuda backend's varlen attention: each sample of a flattened batch attends to itself only.

torch's flash kernels run only on a GPU (tests/gpu/test_gpu.py runs them); here a reference
kernel (sdpa, one sample at a time) stands in for them, so what is tested on the CPU is
portaft's part: the samples' bounds from the batch, the layouts, grouped-query heads,
the dispatch to sdpa for masks and KV caches, and the model passing the bounds down.
"""

import pytest
import torch

import portaft.data
from portaft.speed_ups import varlen_attention
from portaft.data import Seq2SeqCollator
from portaft.data.packing import flattening_collator, packing_supported

pytestmark = pytest.mark.skipif(packing_supported() is not None, reason="this transformers does not read packed batches")


def reference_kernel(query, key, value, cu_seq_lens, max_length, dropout, scale):
    """What the flash kernel computes: causal attention of each span alone."""
    out = torch.empty_like(query)
    bounds = cu_seq_lens.tolist()
    assert max_length == max(e - s for s, e in zip(bounds, bounds[1:]))
    for start, end in zip(bounds, bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)
    return out


def reference_dense_kernel(query, key, value, samples, scale):
    """What cuDNN computes for `samples` spans of one length."""
    length = query.shape[0] // samples
    cu = torch.arange(0, query.shape[0] + 1, length, dtype=torch.int32)
    return reference_kernel(query, key, value, cu, length, 0.0, scale)


@pytest.fixture
def reference_flash(monkeypatch):
    monkeypatch.setattr(varlen_attention, "flash_varlen", reference_kernel)
    monkeypatch.setattr(varlen_attention, "cudnn_dense", reference_dense_kernel)
    monkeypatch.setattr(varlen_attention, "on_flash_device", lambda tensor: True)


def block_diagonal_sdpa(query, key, value, lengths):
    sample = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    allowed = (sample[:, None] == sample[None, :]) & torch.ones(len(sample), len(sample), dtype=torch.bool).tril()
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed,
                                                            enable_gqa=True).transpose(1, 2)


def test_flattened_samples_attend_only_to_themselves_with_grouped_query_heads(reference_flash):
    lengths = [5, 1, 9, 3]
    torch.manual_seed(0)
    query = torch.randn(1, 8, sum(lengths), 16, dtype=torch.bfloat16)
    key, value = (torch.randn(1, 2, sum(lengths), 16, dtype=torch.bfloat16) for _ in range(2))
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    for bounds in ({"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 9, "max_length_k": 9},
                   {"position_ids": torch.cat([torch.arange(n) for n in lengths])[None]}):  # no bounds given
        out, weights = varlen_attention.attention(None, query, key, value, None, scaling=None, **bounds)
        assert weights is None and out.shape == (1, sum(lengths), 8, 16)
        torch.testing.assert_close(out, block_diagonal_sdpa(query, key, value, lengths), atol=2e-2, rtol=2e-2)


def test_samples_of_one_length_go_to_cudnn_unless_flash_only_or_grouped_query(reference_flash, monkeypatch):
    """A flattened batch whose samples all have one length is a dense batch: cuDNN's kernel
    (decided from shapes, no sync); other lengths, grouped-query heads and FLASH_ONLY stay on flash."""
    calls = []
    monkeypatch.setattr(varlen_attention, "flash_varlen", lambda *a: calls.append("flash") or reference_kernel(*a))
    monkeypatch.setattr(varlen_attention, "cudnn_dense",
                        lambda *a: calls.append(("cudnn", a[3])) or reference_dense_kernel(*a))
    torch.manual_seed(0)
    lengths = [6, 6, 6]
    query, key, value = (torch.randn(1, 4, 18, 8, dtype=torch.bfloat16) for _ in range(3))

    def attend(function, key_value_heads=4, cu=(0, 6, 12, 18)):
        bounds = {"cu_seq_lens_q": torch.tensor(cu, dtype=torch.int32), "max_length_q": max(
            e - s for s, e in zip(cu, cu[1:]))}
        return function(None, query, key[:, :key_value_heads], value[:, :key_value_heads], None, **bounds)[0]

    out = attend(varlen_attention.attention)
    assert calls == [("cudnn", 3)]
    torch.testing.assert_close(out, block_diagonal_sdpa(query, key, value, lengths), atol=2e-2, rtol=2e-2)
    calls.clear()
    attend(varlen_attention.attention, cu=(0, 5, 12, 18))  # other lengths
    attend(varlen_attention.attention, key_value_heads=2)
    attend(varlen_attention.flash_only_attention)
    assert calls == ["flash"] * 3


def test_masks_and_kv_caches_go_to_sdpa_unchanged(reference_flash, monkeypatch):
    calls = []
    monkeypatch.setattr(varlen_attention, "flash_varlen", lambda *a: calls.append(a))
    query, key = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 6, 8)  # decoding one token against a cache
    out, _ = varlen_attention.attention(torch.nn.Module(), query, key, key, None)
    assert out.shape == (2, 1, 4, 8)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    out, _ = varlen_attention.attention(torch.nn.Module(), torch.randn(2, 4, 6, 8), key, key, mask)
    assert out.shape == (2, 6, 4, 8) and not calls


def test_a_model_on_varlen_attention_gives_the_padded_loss(reference_flash, recipe_dict, tokenizer, tiny_model,
                                                           monkeypatch):
    """The collator's bounds travel through the model down to attention."""
    from transformers import AutoModelForCausalLM

    rows = portaft.data.load(recipe_dict, tokenizer)
    features = [rows[i] for i in range(len(rows))]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    with torch.no_grad():
        padded = model(**Seq2SeqCollator(tokenizer)(features)).loss
        model.set_attn_implementation(varlen_attention.register())
        assert model.config._attn_implementation == varlen_attention.ATTENTION
        seen = []
        monkeypatch.setattr(varlen_attention, "flash_varlen", lambda *a: seen.append(a[3]) or reference_kernel(*a))
        packed = model(**flattening_collator()(features)).loss
    assert seen and seen[0].tolist()[-1] == sum(len(f["input_ids"]) for f in features)
    assert packed.item() == pytest.approx(padded.item(), rel=2e-2)


def test_without_masks_training_and_unpadded_generation_are_unchanged(reference_flash, recipe_dict, tokenizer,
                                                                         tiny_model, monkeypatch):
    """NAME_WITHOUT_MASKS: transformers builds no mask (no packed-sequence check); the loss of a
    flattened batch and greedy answers to single prompts stay sdpa's."""
    from transformers import AutoModelForCausalLM

    from portaft.data.chat_templates import BUILT_IN
    from portaft.samples import answer_prompts

    rows = portaft.data.load(recipe_dict, tokenizer)
    features = [rows[i] for i in range(len(rows))]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    prompts = ["你是谁？", "Who made you?"]
    with torch.no_grad():
        padded = model(**Seq2SeqCollator(tokenizer)(features)).loss
        answers = answer_prompts(model, tokenizer, BUILT_IN["deepseek"], prompts, max_new_tokens=6)
        model.set_attn_implementation(varlen_attention.register(masks=False))
        assert model.config._attn_implementation == varlen_attention.ATTENTION_WITHOUT_MASKS
        import transformers.masking_utils as masking

        checks = []
        check = masking.find_packed_sequence_indices
        monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda *a: checks.append(1) or check(*a))
        packed = model(**flattening_collator()(features)).loss
        assert not checks  # no packed-sequence check, so no device sync
        assert answer_prompts(model, tokenizer, BUILT_IN["deepseek"], prompts, max_new_tokens=6) == answers
    assert packed.item() == pytest.approx(padded.item(), rel=2e-2)
