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
    from portaft.speed_ups import varlen_attention

    lengths = [37, 1, 120, 64]
    total = sum(lengths)
    torch.manual_seed(0)
    leaves = [torch.randn(1, heads, total, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
              for heads in (8, 2, 2)]
    cu = torch.tensor([0, 37, 38, 158, 222], dtype=torch.int32, device="cuda")
    out, _ = varlen_attention.attention(None, *leaves, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=120,
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


@pytest.mark.parametrize("compiled", [False, True])
def test_cudnn_attention_of_same_length_samples_is_as_exact_as_flash(compiled, monkeypatch):
    """Samples of one length go to cuDNN's fused attention, eager and inside a compiled graph
    (the compiled layers' case): its output and gradients are as close to float32 attention
    as the flash kernels' (bench/attention.py measured both at ~2e-3)."""
    from portaft.speed_ups import varlen_attention

    calls = []
    cudnn_dense = varlen_attention.cudnn_dense
    monkeypatch.setattr(varlen_attention, "cudnn_dense", lambda *a: calls.append("cudnn") or cudnn_dense(*a))
    torch.manual_seed(0)
    leaves = [torch.randn(1, 8, 3 * 256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
              for _ in range(3)]
    bounds = {"cu_seq_lens_q": torch.tensor([0, 256, 512, 768], dtype=torch.int32, device="cuda"),
              "max_length_q": 256}
    reference = [t.detach().float().view(8, 3, 256, 128).transpose(0, 1).requires_grad_() for t in leaves]
    expected = torch.nn.functional.scaled_dot_product_attention(*reference, is_causal=True)
    expected.square().sum().backward()
    expected = [expected.transpose(1, 2).reshape(1, 768, 8, 128)] + [
        t.grad.transpose(0, 1).reshape(1, 8, 768, 128) for t in reference]
    for function in (varlen_attention.attention, varlen_attention.flash_only_attention):
        if compiled:
            function = torch.compile(function, dynamic=True)
        out, _ = function(None, *leaves, None, **bounds)
        out.float().square().sum().backward()
        errors = [float((got.detach().float() - want).norm() / want.norm())
                  for got, want in zip([out] + [t.grad for t in leaves], expected)]
        assert max(errors) < 1e-2, errors
        for t in leaves:
            t.grad = None
    assert calls == ["cudnn"]  # the first function only


def test_cuda_run_says_which_speed_ups_it_uses_and_learns(recipe_dict):
    recipe_dict["train"]["max_steps"] = 12
    recipe_dict["eval_prompts"] = ["你是谁？"]  # generation with float32 adapters on a bfloat16 model
    result = portaft.run(recipe_dict, backend="cuda", echo=print)
    assert any(note.startswith("speed-up varlen_attention: each sample of a flattened batch attends to itself only")
               for note in result.notes)
    fused = importlib.util.find_spec("liger_kernel") is not None
    assert any(note.startswith("speed-up fused_loss: LM head and cross-entropy fused" if fused
                               else "speed-up fused_loss: not used") for note in result.notes)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert sum(losses[-3:]) < sum(losses[:3])


def _adapter_training(config, batches, dropout=0.0, without=()) -> tuple[list[float], list[str]]:
    """A bf16 Llama of `config` with LoRA (r=16, no dropout unless given) through the cuda
    backend's speed-ups (stage model) but those named in `without`: the losses of one AdamW
    step per flattened batch, and the speed-up notes."""
    import types

    from transformers import LlamaForCausalLM

    from portaft.backends.cuda import CudaBackend
    from portaft.recipe import LoraSection
    from portaft.runner.model import apply_lora
    from portaft.speed_ups import MODEL, Training, apply_stage

    recipe = types.SimpleNamespace(model=types.SimpleNamespace(attn_implementation="auto"), quantization=None,
                                   packing=False, train={"bf16": True}, plan="as_written")
    torch.manual_seed(0)
    model = apply_lora(LlamaForCausalLM(config).to(torch.bfloat16).cuda(), LoraSection(r=16, alpha=32, dropout=dropout),
                       False)
    backend = CudaBackend()
    speed_ups = [s for s in CudaBackend.SPEED_UPS if s.NAME not in without]
    notes = apply_stage(speed_ups, MODEL, Training(recipe, backend.device(), 1, model=model, flattened=True))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for batch in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, notes


def _small_llama():
    """The 4-layer Llama of the compile tests (head dimension 64: the flash kernels take it)."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=8, vocab_size=2000, max_position_embeddings=2048, use_cache=False)


def _same_losses_with_and_without(speed_up: str, config, batches, says_so, rel: float, dropout: float = 0.0) -> None:
    """The cuda backend's speed-ups with and without `speed_up`: a note that `says_so` only
    with it, and the same losses within `rel`."""
    runs = {}
    for on in (True, False):
        runs[on], notes = _adapter_training(config, batches, dropout, without=() if on else (speed_up,))
        assert any(says_so(note) for note in notes) == on
    assert runs[True] == pytest.approx(runs[False], rel=rel)


def _flattened_batches(count: int, vocab: int, prompt: int, seed: int) -> list[dict]:
    """`count` flattened batches of four random samples (300-644 tokens), the first `prompt` untrained."""
    from portaft.data.packing import flattening_collator

    generator = torch.Generator().manual_seed(seed)
    return [flattening_collator()([{"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]} for ids in (
        torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (300, 517, 211, 644))])
        for _ in range(count)]


def test_compiled_layers_train_with_eager_numerics_on_cuda():
    """compile_layers in bf16 with the varlen attention, through the cuda policy: with no
    dropout, six AdamW steps give eager's losses. (This small model agreed even before
    Inductor was told to round like eager; the 7B shape did not: steps/7-compile-eager-numerics.)"""
    _same_losses_with_and_without("compiled_layers", _small_llama(), _flattened_batches(6, 2000, prompt=20, seed=1),
                                  lambda note: note.startswith("speed-up compiled_layers: each of the 4 decoder layers"),
                                  rel=1e-4)


def test_compiled_layers_draw_eager_dropout_masks_on_cuda():
    """With LoRA dropout 0.1, compiled layers draw eager's masks on the GPU too (Inductor's
    fallback_random, which is also what made them faster, steps/14-...): four AdamW steps
    from the same seed give eager's losses."""
    _same_losses_with_and_without("compiled_layers", _small_llama(), _flattened_batches(4, 2000, prompt=20, seed=3),
                                  lambda note: note.startswith("speed-up compiled_layers: each of the 4 decoder layers"),
                                  rel=1e-4, dropout=0.1)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel (portaft[cuda])")
def test_larger_loss_chunks_give_the_same_losses_through_compiled_layers(monkeypatch):
    """fused_loss's larger chunks: Liger's loss in 128-token chunks instead of 8 for this narrow
    model under a wide vocabulary (the shape of Qwen2.5-0.5B's problem); its chunk_mem_const
    also travels through the compiled layers' keyword arguments. Four AdamW steps, no dropout;
    Liger's own chunks where it is told it cannot take larger ones."""
    from transformers import LlamaConfig

    from portaft.speed_ups import _liger

    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, use_cache=False)
    batches, runs = _flattened_batches(4, 32000, prompt=10, seed=2), {}
    for larger in (True, False):
        monkeypatch.setattr(_liger, "takes_chunk_mem_const", lambda larger=larger: larger)
        runs[larger], notes = _adapter_training(config, batches)
        assert any(note.endswith("in chunks of up to 16x the hidden states' size") for note in notes) == larger
    assert runs[True] == pytest.approx(runs[False], rel=1e-3)


def test_the_probe_step_measures_on_cuda_and_leaves_the_loss_of_the_estimates_split(recipe_dict, tmp_path):
    """plan auto's probe (runner/probe.py) on a real device: it measures, it records, and the run it
    chose again trains the losses of the recipe as written (within bf16 rounding)."""
    recipe_dict["train"].update(per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=4,
                                gradient_checkpointing=True, output_dir=str(tmp_path / "auto"))
    auto = portaft.run(recipe_dict, backend="cuda", echo=print)
    written = portaft.run({**recipe_dict, "plan": "as_written",
                           "train": {**recipe_dict["train"], "output_dir": str(tmp_path / "written")}},
                          backend="cuda", echo=print)
    plan = json.loads((auto.output_dir / "portaft_run.json").read_text(encoding="utf-8"))["plan"]
    assert plan["probe"]["measured"], plan["probe"]
    assert plan["probe"]["kept_mb_per_token"] > 0 and plan["probe"]["tokens"] > 0
    assert (plan["micro_batch"], plan["checkpointing"]) == (8, False)  # a tiny model: the whole step fits
    losses = [[e["loss"] for e in run.log_history if "loss" in e] for run in (auto, written)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
