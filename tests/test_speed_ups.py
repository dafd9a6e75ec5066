"""The cuda policy's speed-ups say what they did, or why they could not, in the run's notes."""

import dataclasses
import importlib.util

import pytest
import torch

from portaft.backends._speed_ups import speed_up
from portaft.backends.cuda import CUDA
from portaft.recipe import Recipe


@pytest.fixture
def loaded(recipe_dict, tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model), Recipe.model_validate(recipe_dict)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reasons given where there is no GPU")
@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="needs liger-kernel absent")
def test_without_a_gpu_or_liger_each_speed_up_says_why_it_is_not_used(loaded):
    model, recipe = loaded
    notes = speed_up(model, recipe, CUDA, flattened=True)
    why = ("torch's flash kernels need an Ampere or newer GPU" if hasattr(model, "set_attn_implementation")
           else "this transformers cannot change a loaded model's attention")
    assert notes == [
        f"attention: sdpa over the whole flattened batch under a mask ({why})",
        "loss: the full logits are computed (liger-kernel is not installed (pip install 'liger-kernel>=0.8' "
        "(or portaft[cuda])))",
        f"kernels: each of the {model.config.num_hidden_layers} decoder layers compiled (torch.compile, on the "
        "first steps; if the compile fails they run uncompiled, with a warning)",
    ]
    assert model.config._attn_implementation != "portaft_varlen"


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="needs liger-kernel absent")
@pytest.mark.parametrize("setup, why", [
    ("gradient_checkpointing", "not tried with gradient checkpointing, which recomputes each layer in the backward pass"),
    ("quantization", "not tried with bitsandbytes' 4-bit layers")])
def test_layers_stay_uncompiled_where_compiling_was_never_measured(loaded, setup, why):
    """The cuda policy compiles the layers by default, except with gradient checkpointing or
    4-bit layers; there the run says so and Liger's norms are used instead."""
    model, recipe = loaded
    if setup == "quantization":
        recipe.quantization = {"bits": 4}
    else:
        recipe.train["gradient_checkpointing"] = True
    layer_forwards = [layer.forward for layer in model.model.layers]
    notes = speed_up(model, recipe, dataclasses.replace(CUDA, varlen_attention=False, fused_loss=False), flattened=True)
    assert notes[0] == f"kernels: the decoder layers run uncompiled ({why})"
    assert notes[1].startswith("kernels: RMSNorm and the SwiGLU activation unfused (liger-kernel is not installed")
    assert len(notes) == 2
    assert [layer.forward for layer in model.model.layers] == layer_forwards


@pytest.mark.parametrize("cudnn_reason", [None, "grouped-query heads"])
def test_the_attention_note_says_whether_same_length_batches_take_cudnn(loaded, monkeypatch, cudnn_reason):
    """Where the varlen kernels can run, the note also says whether cuDNN takes batches of
    same-length samples, or why not; without cuDNN the model gets the flash-only attention."""
    from portaft.backends import _flash_varlen

    model, recipe = loaded
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("this transformers cannot change a loaded model's attention")
    monkeypatch.setattr(_flash_varlen, "unusable_reason", lambda model: None)
    monkeypatch.setattr(_flash_varlen, "cudnn_unusable_reason", lambda model: cudnn_reason)
    policy = dataclasses.replace(CUDA, fused_loss=False, fused_norms=False, compile_layers=False)
    [note] = speed_up(model, recipe, policy, flattened=True)
    assert note.startswith("attention: each sample of a flattened batch attends to itself only")
    if cudnn_reason is None:
        assert note.endswith("; batches of same-length samples take cuDNN's fused attention")
        assert model.config._attn_implementation == _flash_varlen.NAME
    else:
        assert note.endswith("; cuDNN's fused attention is not used (grouped-query heads)")
        assert model.config._attn_implementation == _flash_varlen.NAME + _flash_varlen.FLASH_ONLY


@pytest.mark.parametrize("world_size, masks", [(None, True), ("1", True), ("2", False)])
def test_the_cuda_default_builds_no_masks_only_under_several_processes(loaded, monkeypatch, world_size, masks):
    """Without masks transformers skips its packed-sequence check, a device sync at the start
    of each forward: measured faster with 2 processes, not with one, so the cuda default
    drops the masks only when torchrun started several; the note says so."""
    from portaft.backends import _flash_varlen

    model, recipe = loaded
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("this transformers cannot change a loaded model's attention")
    monkeypatch.setattr(_flash_varlen, "unusable_reason", lambda model: None)
    monkeypatch.setattr(_flash_varlen, "cudnn_unusable_reason", lambda model: None)
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    policy = dataclasses.replace(CUDA, fused_loss=False, fused_norms=False, compile_layers=False)
    [note] = speed_up(model, recipe, policy, flattened=True)
    expected = _flash_varlen.NAME if masks else _flash_varlen.NAME_WITHOUT_MASKS
    assert model.config._attn_implementation == expected
    assert note.endswith("; transformers builds no attention masks (no device sync at the start of each forward)") \
        is not masks


def test_what_the_recipe_chose_is_kept_and_padded_batches_keep_sdpa(loaded):
    model, recipe = loaded
    recipe.model.attn_implementation = "sdpa"
    policy = dataclasses.replace(CUDA, fused_loss=False, fused_norms=False, compile_layers=False)
    assert speed_up(model, recipe, policy, flattened=True) == []
    recipe.model.attn_implementation = "auto"
    assert speed_up(model, recipe, policy, flattened=False) == []


def test_fused_lora_updates_are_switched_on_by_the_policy_on_the_adapter_model(loaded):
    from portaft.adapters import apply_lora
    from portaft.recipe import LoraSection

    model, recipe = loaded
    model = apply_lora(model, LoraSection(r=4, alpha=8, dropout=0.0), False)
    policy = dataclasses.replace(CUDA, varlen_attention=False, fused_loss=False, fused_norms=False, fused_lora=True,
                                 compile_layers=False)
    layers = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    assert speed_up(model, recipe, policy, flattened=True) == [
        f"adapter: the update of {layers} LoRA layers added inside the matmul (addmm), not by separate scale and "
        "add kernels"]


def _adapted_tiny_model(tiny_model, dropout=0.0):
    from transformers import AutoModelForCausalLM

    from portaft.adapters import apply_lora
    from portaft.recipe import LoraSection

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model), LoraSection(r=4, alpha=8, dropout=dropout),
                       False)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter something to add
            torch.nn.init.normal_(parameter, std=0.05)
    model.train()
    return model


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same_loss_and_grads(compiled, eager) -> None:
    """(loss, grads) of a compiled run against an eager one: within float32 rounding."""
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-4, atol=1e-5)


def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model):
    """compile_layers (torch.compile per decoder layer, Inductor on this CPU): the same numbers
    within float32 rounding, over shapes that change from call to call."""
    from portaft.backends._speed_ups import _compile_layers

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager, compiled = _adapted_tiny_model(tiny_model), _adapted_tiny_model(tiny_model)
    layers = len(compiled.get_base_model().model.layers)
    assert _compile_layers(compiled.get_base_model()) == (
        f"kernels: each of the {layers} decoder layers compiled (torch.compile, on the first steps; if the "
        "compile fails they run uncompiled, with a warning)")
    for length in (12, 17):
        ids = torch.randint(3, 100, (2, length))
        _assert_same_loss_and_grads(_loss_and_grads(compiled, ids), _loss_and_grads(eager, ids))
    assert counters["stats"]["unique_graphs"] >= 1  # really compiled, not the eager forward twice


def test_compiled_layers_draw_eager_dropout_masks(tiny_model):
    """With LoRA dropout, compiled layers draw their masks as eager layers do (Inductor's
    fallback_random): from the same seed, the same loss and gradients. Inductor's own random
    numbers would give other masks, and a compiled run could not be compared step by step."""
    from portaft.backends._speed_ups import _compile_layers

    torch._dynamo.reset()
    eager, compiled = _adapted_tiny_model(tiny_model, dropout=0.3), _adapted_tiny_model(tiny_model, dropout=0.3)
    _compile_layers(compiled.get_base_model())
    ids = torch.randint(3, 100, (2, 16))
    torch.manual_seed(1)
    eager_run = _loss_and_grads(eager, ids)
    torch.manual_seed(1)
    compiled_run = _loss_and_grads(compiled, ids)
    torch.manual_seed(2)  # other masks: a loss that differs, so the equality below is the masks'
    other_loss, _ = _loss_and_grads(eager, ids)
    assert other_loss != pytest.approx(eager_run[0], rel=1e-4)
    _assert_same_loss_and_grads(compiled_run, eager_run)


def _failing_compiler(graph, example_inputs):
    raise RuntimeError("no compiler for this device")


def _failing_backward_compiler():
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=lambda graph, example_inputs: graph, bw_compiler=_failing_compiler)


@pytest.mark.parametrize("failing", ["forward", "backward"])
def test_a_compile_that_fails_leaves_the_layers_uncompiled_with_a_warning(tiny_model, capsys, failing):
    """Also when only the backward graph fails: it is compiled with the forward, where the fallback is."""
    from portaft.backends._speed_ups import _compile_layers

    torch._dynamo.reset()
    eager, model = _adapted_tiny_model(tiny_model), _adapted_tiny_model(tiny_model)
    base = model.get_base_model()
    _compile_layers(base, backend=_failing_compiler if failing == "forward" else _failing_backward_compiler())
    ids = torch.randint(3, 100, (2, 12))
    loss, grads = _loss_and_grads(model, ids)
    assert "portaft: warning: torch.compile of the decoder layers failed, they run uncompiled" in capsys.readouterr().err
    assert all(layer.forward.__func__ is type(layer).forward for layer in base.model.layers)  # their own again
    expected_loss, expected_grads = _loss_and_grads(eager, ids)
    assert loss == expected_loss
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0)
    _loss_and_grads(model, ids)  # later steps run uncompiled, without another warning
    assert capsys.readouterr().err == ""


def test_compiled_layers_stay_whole_under_ddp(monkeypatch):
    """Inside DDP's forward, dynamo's DDPOptimizer would split each compiled layer at DDP's
    bucket boundaries (its first bucket is 1 MiB: every Qwen2.5-0.5B layer became two graphs
    forward and backward under --nproc 2, steps/10-.../profiles-with-masks), which only helps
    a whole model compiled as one graph. Each layer is one graph here, so it stays whole.
    DDP's forward is stood in for by what dynamo asks of it (the active DDP module and its
    bucket size): a real one under gloo hung in its process group's destructor."""
    import types

    from torch.nn.parallel import DistributedDataParallel

    from portaft.backends._speed_ups import _compile_layers

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(512, 512), torch.nn.Linear(512, 512)  # 1 MiB each

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    class Decoder(torch.nn.Module):
        base_model_prefix = "decoder"

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(), Layer()])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(sum(1 for node in graph.graph.nodes if "linear" in str(node.target)))
        return graph.forward

    torch._dynamo.reset()
    decoder = Decoder()
    _compile_layers(decoder, backend=counting_backend)
    monkeypatch.setattr(DistributedDataParallel, "_active_ddp_module",
                        types.SimpleNamespace(bucket_bytes_cap=25 * 1024 * 1024))
    decoder(torch.randn(4, 512)).sum().backward()
    assert graphs and all(linears == 2 for linears in graphs), graphs


@pytest.fixture
def fake_liger(monkeypatch):
    """Stand-ins for the pieces of liger-kernel 0.8.5 that portaft calls (the real one needs a
    GPU): Liger's forward records the keyword arguments it is given."""
    import importlib.machinery
    import sys
    import types

    given = []
    names = ("liger_kernel", "liger_kernel.transformers", "liger_kernel.transformers.model",
             "liger_kernel.transformers.model.llama", "liger_kernel.transformers.functional", "liger_kernel.ops",
             "liger_kernel.ops.fused_linear_cross_entropy")
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    modules["liger_kernel.transformers.model.llama"].lce_forward = lambda self, **kwargs: given.append(kwargs)
    modules["liger_kernel.transformers.functional"].liger_fused_linear_cross_entropy = (
        lambda input, weight, target, reduction="mean", chunk_mem_const=1: None)
    modules["liger_kernel.ops.fused_linear_cross_entropy"].LigerFusedLinearCrossEntropyFunction = type(
        "LigerFusedLinearCrossEntropyFunction", (), {"supports_inner_impl_dispatch": True})
    return types.SimpleNamespace(given=given, functional=modules["liger_kernel.transformers.functional"])


@pytest.mark.parametrize("larger", [False, True])
def test_larger_loss_chunks_reach_liger_and_the_note(loaded, fake_liger, larger):
    """Liger's default chunks are 64 tokens for a 896-wide model under a 152k vocabulary; the
    opt-in switch hands its loss a 16x budget, through its forward's keyword arguments."""
    model, recipe = loaded
    if model.config.model_type != "llama":
        pytest.skip("the stand-in is Liger's llama forward")
    policy = dataclasses.replace(CUDA, varlen_attention=False, fused_norms=False, compile_layers=False,
                                 larger_loss_chunks=larger)
    [note] = speed_up(model, recipe, policy, flattened=True)
    assert note.startswith("loss: LM head and cross-entropy fused (Liger Kernel)")
    assert note.endswith(", in chunks of up to 16x the hidden states' size") is larger
    model(input_ids=torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2]]))
    [given] = fake_liger.given
    assert sorted(given) == sorted(["input_ids", "labels"] + ["chunk_mem_const"] * larger)
    assert given.get("chunk_mem_const") == (16 if larger else None)


def test_a_liger_that_takes_no_chunk_size_keeps_its_own_and_says_so(loaded, fake_liger):
    """An older liger-kernel would drop chunk_mem_const without a word: then nothing is passed
    and the note says the chunks are Liger's own."""
    model, recipe = loaded
    if model.config.model_type != "llama":
        pytest.skip("the stand-in is Liger's llama forward")
    fake_liger.functional.liger_fused_linear_cross_entropy = lambda input, weight, target, reduction="mean": None
    policy = dataclasses.replace(CUDA, varlen_attention=False, fused_norms=False, compile_layers=False,
                                 larger_loss_chunks=True)
    [note] = speed_up(model, recipe, policy, flattened=True)
    assert note.endswith("the logits never held whole (in Liger's own chunks: this liger-kernel cannot be given "
                         "larger ones)")
    model(input_ids=torch.tensor([[1, 2]]))
    assert "chunk_mem_const" not in fake_liger.given[0]
