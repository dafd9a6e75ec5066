"""Compiled decoder layers (the compiled_layers speed-up) on the CPU: eager's numbers, eager's
dropout masks, a failed compile falls back, and DDP does not split a layer's graph."""

import pytest
import torch


def _adapted_tiny_model(tiny_model, dropout=0.0):
    from transformers import AutoModelForCausalLM

    from portaft.runner.model import apply_lora
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
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # as portaft's batches say (no KV cache)
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
    from portaft.speed_ups.compiled_layers import compile_layers

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager, compiled = _adapted_tiny_model(tiny_model), _adapted_tiny_model(tiny_model)
    layers = len(compiled.get_base_model().model.layers)
    counters.clear()
    assert compile_layers(compiled.get_base_model()) == (
        f"each of the {layers} decoder layers compiled (torch.compile, on the first steps, one graph for all; if the "
        "compile fails they run uncompiled, with a warning)")
    for length in (12, 17):
        ids = torch.randint(3, 100, (2, length))
        _assert_same_loss_and_grads(_loss_and_grads(compiled, ids), _loss_and_grads(eager, ids))
    # really compiled, and once: the first layer (whose input is the frozen embedding's output) shares the
    # others' graph, where it used to compile one of its own; other lengths compile nothing more (dynamic)
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["aot_autograd"]["total"] == 1  # traced once: no analysis restarted over a Python float


def test_compiled_layers_draw_eager_dropout_masks(tiny_model):
    """With LoRA dropout, compiled layers draw their masks as eager layers do (Inductor's
    fallback_random): from the same seed, the same loss and gradients. Inductor's own random
    numbers would give other masks, and a compiled run could not be compared step by step."""
    from portaft.speed_ups.compiled_layers import compile_layers

    torch._dynamo.reset()
    eager, compiled = _adapted_tiny_model(tiny_model, dropout=0.3), _adapted_tiny_model(tiny_model, dropout=0.3)
    compile_layers(compiled.get_base_model())
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
    from portaft.speed_ups.compiled_layers import compile_layers

    torch._dynamo.reset()
    eager, model = _adapted_tiny_model(tiny_model), _adapted_tiny_model(tiny_model)
    base = model.get_base_model()
    compile_layers(base, backend=_failing_compiler if failing == "forward" else _failing_backward_compiler())
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

    from portaft.speed_ups.compiled_layers import compile_layers

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
    compile_layers(decoder, backend=counting_backend)
    monkeypatch.setattr(DistributedDataParallel, "_active_ddp_module",
                        types.SimpleNamespace(bucket_bytes_cap=25 * 1024 * 1024))
    decoder(torch.randn(4, 512)).sum().backward()
    assert graphs and all(linears == 2 for linears in graphs), graphs


def test_what_the_layers_compiled_is_kept_for_the_next_run(tiny_model, tmp_path, monkeypatch, capsys):
    """The compile's artifacts go to the user's cache folder after the steps that compile, and the
    next run loads them before compiling; the first step says it compiles."""
    from portaft.speed_ups import _compile_cache
    from portaft.speed_ups.compiled_layers import compile_layers

    monkeypatch.setenv("PORTAFT_CACHE", str(tmp_path / "cache"))
    path = _compile_cache.cache_file("cpu")
    assert str(path).startswith(str(tmp_path / "cache" / "compile"))
    assert _compile_cache.load(path).startswith("no compile cache yet")
    torch._dynamo.reset()
    model = _adapted_tiny_model(tiny_model)
    compile_layers(model.get_base_model())
    progress = _compile_cache.CompileProgress(path, speak=True)
    progress.on_step_begin(None, None, None)
    _loss_and_grads(model, torch.randint(3, 100, (2, 12)))
    for _ in range(_compile_cache.CompileProgress.KEEP_AFTER_STEP):
        progress.on_step_end(None, None, None)
    said = capsys.readouterr().err
    assert "compiling the decoder layers" in said and "first step done in" in said
    assert path.is_file() and path.stat().st_size > 0
    kept = path.stat().st_size
    assert not _compile_cache.save(path) or path.stat().st_size >= kept  # never replaced by a smaller set
    assert _compile_cache.load(path) == f"compile cache loaded from {path}"
