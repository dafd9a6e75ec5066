"""The simulated torch_npu (tests/npu_doubles.py) computes what Ascend's docs say, checked
against transformers' and torch's own code, and refuses what the docs rule out."""

import pytest
import torch

import npu_doubles as npu


def _causal_sdpa(q, k, v, scale):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def _compressed():
    return torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)


def test_tnd_with_cumulative_lengths_and_sparse_mode_3_is_causal_attention_per_sample():
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [3, 5, 4], 4, 2, 8
    q = torch.randn(sum(lengths), heads, dim)
    k, v = torch.randn(sum(lengths), kv_heads, dim), torch.randn(sum(lengths), kv_heads, dim)
    result = npu.npu_fusion_attention(q, k, v, heads, "TND", atten_mask=_compressed(), scale=0.3,
                                      actual_seq_qlen=(3, 8, 12), actual_seq_kvlen=(3, 8, 12), sparse_mode=3)
    assert len(result) == 7 and result[1].shape == (12, heads, 8)
    start = 0
    for length in lengths:  # each sample alone, grouped-query heads as transformers' repeat_kv maps them
        part = slice(start, start + length)
        expected = _causal_sdpa(q[part].transpose(0, 1)[None], k[part].transpose(0, 1).repeat_interleave(2, 0)[None],
                                v[part].transpose(0, 1).repeat_interleave(2, 0)[None], 0.3)[0].transpose(0, 1)
        torch.testing.assert_close(result[0][part], expected)
        start += length


def test_bnsd_and_bsnd_are_the_same_attention_in_two_layouts():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    bnsd = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=_compressed(), scale=0.5, sparse_mode=2)[0]
    bsnd = npu.npu_fusion_attention(*(t.transpose(1, 2) for t in (q, k, v)), 4, "BSND", atten_mask=_compressed(),
                                    scale=0.5, sparse_mode=2)[0]
    torch.testing.assert_close(bnsd, _causal_sdpa(q, k, v, 0.5))
    torch.testing.assert_close(bsnd.transpose(1, 2), bnsd)
    # BNSD tensors declared BSND: heads and positions trade places, another result (or a refusal)
    wrong = npu.npu_fusion_attention(q, k, v, 6, "BSND", atten_mask=_compressed(), scale=0.5, sparse_mode=2)[0]
    assert not torch.allclose(wrong, bnsd)  # the same shape, other numbers


@pytest.mark.parametrize("call, message", [
    (dict(actual_seq_qlen=(3, 5, 4), actual_seq_kvlen=(3, 5, 4)), "cumulative ends"),  # lengths, not ends
    (dict(actual_seq_qlen=(3, 8, 12), actual_seq_kvlen=(3, 8, 12), atten_mask=None), "needs atten_mask"),
    (dict(actual_seq_qlen=(3, 8, 12), actual_seq_kvlen=(3, 8, 12),
          atten_mask=torch.triu(torch.ones(12, 12, dtype=torch.bool), 1)), "compressed 2048x2048"),
    (dict(), "needs actual_seq_qlen"),
])
def test_what_the_docs_rule_out_is_refused(call, message):
    q = torch.randn(12, 2, 8)
    kwargs = {"atten_mask": _compressed(), "sparse_mode": 3, **call}
    with pytest.raises(ValueError, match=message):
        npu.npu_fusion_attention(q, q, q, 2, "TND", scale=1.0, **kwargs)


def test_no_mask_is_attention_over_the_whole_sample():
    q = torch.randn(1, 2, 5, 8)
    got = npu.npu_fusion_attention(q, q, q, 2, "BNSD", scale=0.2)[0]
    torch.testing.assert_close(got, torch.nn.functional.scaled_dot_product_attention(q, q, q, scale=0.2))


def test_rms_norm_is_llamas_and_returns_rstd():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16)
    y, rstd = npu.npu_rms_norm(x, norm.weight, epsilon=1e-5)
    torch.testing.assert_close(y, norm(x), rtol=0, atol=0)
    assert rstd.shape == (2, 3, 1) and rstd.dtype == torch.float32
    with pytest.raises(TypeError, match="must match"):
        npu.npu_rms_norm(x.double(), norm.weight)


def test_rotary_mul_half_is_transformers_rotate_half_and_interleave_is_not():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 4, 6, 16)
    cos, sin = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    expected_q, _ = apply_rotary_pos_emb(q, k, cos, sin)
    got = npu.npu_rotary_mul(q, cos.unsqueeze(1), sin.unsqueeze(1))
    torch.testing.assert_close(got, expected_q, rtol=0, atol=0)
    assert not torch.allclose(npu.npu_rotary_mul(q, cos.unsqueeze(1), sin.unsqueeze(1), "interleave"), expected_q)


def test_swiglu_gates_the_first_half():
    gate, up = torch.randn(3, 10), torch.randn(3, 10)
    torch.testing.assert_close(npu.npu_swiglu(torch.cat((gate, up), -1)), torch.nn.functional.silu(gate) * up)
    assert not torch.allclose(npu.npu_swiglu(torch.cat((up, gate), -1)), torch.nn.functional.silu(gate) * up)
    with pytest.raises(ValueError, match="odd size"):
        npu.npu_swiglu(torch.randn(3, 5))


def test_the_fused_adamw_steps_as_torchs_adamw():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4)), None
    b = torch.nn.Parameter(a.detach().clone())
    ours, theirs = npu.NpuFusedAdamW([a], lr=0.1, weight_decay=0.01), torch.optim.AdamW([b], lr=0.1, weight_decay=0.01)
    for _ in range(3):
        for p, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            (p ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(a, b)


def test_installed_it_is_imported_as_torch_npu_and_records_the_environment(monkeypatch):
    import importlib
    import sys

    monkeypatch.setenv("PORTAFT_PROBE", "before")
    state = npu.install(monkeypatch, available=True)
    torch_npu = importlib.import_module("torch_npu")
    assert torch_npu.npu_swiglu is npu.npu_swiglu and state["environ_at_import"]["PORTAFT_PROBE"] == "before"
    assert importlib.import_module("torch_npu.optim").NpuFusedAdamW is npu.NpuFusedAdamW
    assert torch.npu.is_available() and "torch_npu" in sys.modules
