"""The cuda backend on a real GPU (skipped where torch sees none, as in CI)."""

import importlib.util
import json

import pytest
import torch

import portaft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_backend_trains_in_mixed_precision_and_saves_a_loadable_adapter(recipe_dict):
    recipe_dict["train"]["max_steps"] = 12
    result = portaft.run(recipe_dict, backend="cuda", echo=print)
    record = json.loads((result.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["device"].startswith("cuda")
    precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert any(note == f"model.dtype: auto -> {precision} (matches the training precision)" for note in result.notes)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert sum(losses[-3:]) < sum(losses[:3])

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name_or_path"])
    PeftModel.from_pretrained(base, result.output_dir)


def test_packed_batches_give_the_padded_loss_on_cuda(recipe_dict, tokenizer, tiny_model):
    """transformers reads packed position_ids as sequence boundaries on the GPU too (sdpa)."""
    from transformers import AutoModelForCausalLM

    import portaft.data
    from portaft.compat import model_dtype_kwargs
    from portaft.data import Seq2SeqCollator
    from portaft.data.packing import flattening_collator

    rows = portaft.data.load(recipe_dict, tokenizer)
    features = [rows[i] for i in range(len(rows))]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, **model_dtype_kwargs(torch.float32)).cuda()
    with torch.no_grad():
        padded = model(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in Seq2SeqCollator(tokenizer)(features).items()})
        packed = model(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in flattening_collator()(features).items()})
    assert packed.loss.item() == pytest.approx(padded.loss.item(), rel=1e-4)


def test_a_packed_run_trains_on_cuda(recipe_dict):
    recipe_dict["train"]["max_steps"] = 12
    result = portaft.run({**recipe_dict, "packing": True}, backend="cuda", echo=print)
    assert any(note.startswith("packing: 8 samples in ") for note in result.notes)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (portaft[qlora])")
def test_qlora_trains_a_4bit_base_and_saves_an_adapter_for_the_unquantized_base(recipe_dict):
    recipe_dict["train"]["max_steps"] = 12
    recipe = {**recipe_dict, "quantization": {"bits": 4}}
    lines = []
    result = portaft.run(recipe, backend="cuda", echo=lines.append)
    print("\n".join(lines))
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert sum(losses[-3:]) < sum(losses[:3])
    record = json.loads((result.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["peak_memory_gib"] > 0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name_or_path"])
    # 4-bit weights are stored two to a byte: the run's model counted fewer parameters than the base has
    summary = next(line for line in lines if "trainable parameters:" in line)
    trainable, total = (int(x.replace(",", "")) for x in summary.split(": ")[-1].split(" (")[0].split(" of "))
    assert total - trainable < sum(p.numel() for p in base.parameters())
    PeftModel.from_pretrained(base, result.output_dir)  # the adapter fits the full-precision base (merge uses it)


def test_varlen_attention_equals_block_diagonal_sdpa_forward_and_backward():
    """torch's flash kernels with the samples' bounds: the attention and gradients of
    sdpa under a block-diagonal mask (grouped-query heads, a one-token sample)."""
    from portaft.backends import _flash_varlen

    lengths = [37, 1, 120, 64]
    total = sum(lengths)
    torch.manual_seed(0)
    leaves = [torch.randn(1, heads, total, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
              for heads in (8, 2, 2)]
    cu = torch.tensor([0, 37, 38, 158, 222], dtype=torch.int32, device="cuda")
    out, _ = _flash_varlen.attention(None, *leaves, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=120,
                                     max_length_k=120)
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in leaves]

    sample = torch.repeat_interleave(torch.arange(4, device="cuda"), torch.tensor(lengths, device="cuda"))
    allowed = (sample[:, None] == sample[None, :]) & torch.ones(total, total, dtype=torch.bool, device="cuda").tril()
    reference = [t.detach().float().requires_grad_() for t in leaves]
    expected = torch.nn.functional.scaled_dot_product_attention(*reference, attn_mask=allowed,
                                                                enable_gqa=True).transpose(1, 2)
    expected.square().sum().backward()
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    for grad, ref in zip(grads, reference):
        torch.testing.assert_close(grad.float(), ref.grad, atol=5e-2, rtol=5e-2)


def test_cuda_run_says_which_speed_ups_it_uses_and_learns(recipe_dict):
    recipe_dict["train"]["max_steps"] = 12
    recipe_dict["eval_prompts"] = ["你是谁？"]  # generation with float32 adapters on a bfloat16 model
    result = portaft.run(recipe_dict, backend="cuda", echo=print)
    assert any(note.startswith("attention: each sample of a flattened batch attends to itself only")
               for note in result.notes)
    fused = importlib.util.find_spec("liger_kernel") is not None
    assert any(note.startswith("loss: LM head and cross-entropy fused" if fused else "loss: the full logits")
               for note in result.notes)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert sum(losses[-3:]) < sum(losses[:3])
