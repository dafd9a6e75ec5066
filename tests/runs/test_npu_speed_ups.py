"""The Ascend speed-ups (portaft/speed_ups/npu_*.py) trained for real on the CPU through the
simulated torch_npu (tests/npu_doubles.py): the npu backend's run with every fused operator
gives the per-step losses of the unfused cpu run (fp32, 1e-5 relative), and each
deliberately wrong call (wrong layout, per-sample instead of cumulative lengths, no causal
mask, interleaved rotary, the SwiGLU halves swapped) makes that comparison fail."""

import functools

import pytest
import torch

import npu_doubles
import portaft
from helpers import plugin, use_plugins
from portaft.backends import npu_platform
from portaft.backends.npu import NpuBackend
from portaft.speed_ups import npu_fusion_attention, npu_rotary_mul, npu_swiglu

TOLERANCE = 1e-5


def _flattened_attention_problem():
    """Why this transformers cannot flatten batches or take a registered attention (4.45: both)."""
    from transformers import PreTrainedModel

    from portaft.data.packing import packing_supported

    if not hasattr(PreTrainedModel, "set_attn_implementation"):
        return "this transformers cannot change a loaded model's attention"
    return packing_supported()


NO_FLAT_ATTENTION = _flattened_attention_problem()
needs_flat_attention = pytest.mark.skipif(NO_FLAT_ATTENTION is not None, reason=str(NO_FLAT_ATTENTION))
NPU_SPEED_UPS = ["npu_fused_adamw", *(["padding_free", "npu_fusion_attention"] if NO_FLAT_ATTENTION is None else []),
                 "npu_rms_norm", "npu_rotary_mul", "npu_swiglu"]


class SimulatedNpu(NpuBackend):
    """The npu backend, its Ascend speed-ups offered on the CPU too (`device: cpu`): the
    simulated operators compute on CPU tensors."""

    name = "npu-sim"
    priority = -10

    def speed_ups(self, recipe):
        return self.SPEED_UPS


@pytest.fixture
def simulated(monkeypatch):
    """The simulated torch_npu installed, the platform's variables restored afterwards."""
    for name in ("TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "PYTORCH_NPU_ALLOC_CONF", "HCCL_CONNECT_TIMEOUT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    npu_platform.reset()
    state = npu_doubles.install(monkeypatch, available=False)
    use_plugins(monkeypatch, sim=plugin(register_backends=lambda register: register(SimulatedNpu())))
    yield state
    npu_platform.reset()


@pytest.fixture
def recipe(recipe_dict, varied_file):
    """Three steps of three samples of different lengths; no eval prompts (generation is slow, and padded)."""
    kept = {k: v for k, v in recipe_dict.items() if k != "eval_prompts"}
    return {**kept, "data": [{"path": str(varied_file)}], "device": "cpu",
            "train": {**recipe_dict["train"], "per_device_train_batch_size": 3, "max_steps": 3, "save_steps": 100}}


def _losses(result):
    return [e["loss"] for e in result.log_history if "loss" in e]


def _run(recipe, tmp_path, name, backend):
    return portaft.run({**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / name)}}, backend=backend,
                       echo=lambda _: None)


_UNFUSED = []  # the cpu run's losses, computed once: every test's recipe is the same but for its folders


@pytest.fixture
def unfused(recipe, tmp_path):
    if not _UNFUSED:
        _UNFUSED.append(_losses(_run(recipe, tmp_path, "cpu", "cpu")))
    return _UNFUSED[0]


def _same(losses, reference):
    return len(losses) == len(reference) and all(abs(a - b) <= TOLERANCE * abs(b) for a, b in zip(losses, reference))


def test_every_fused_operator_gives_the_unfused_losses(simulated, recipe, tmp_path, unfused):
    result = _run(recipe, tmp_path, "sim", "npu-sim")
    applied = [n.split(":")[0].removeprefix("speed-up ") for n in result.notes
               if n.startswith("speed-up ") and ": not used" not in n]
    assert [n for n in applied if n in NPU_SPEED_UPS] == NPU_SPEED_UPS
    if NO_FLAT_ATTENTION is None:
        assert any("portaft's own call" in n for n in result.notes)
    else:  # the openMind environment (transformers 4.45): padded batches, said in a note
        assert any(n.startswith("speed-up npu_fusion_attention: not used (") for n in result.notes)
    assert len(unfused) == 3 and _same(_losses(result), unfused), (_losses(result), unfused)


@needs_flat_attention
def test_through_transformers_npu_integration_too(simulated, recipe, tmp_path, unfused, monkeypatch):
    integration = pytest.importorskip("transformers.integrations.npu_flash_attention")
    monkeypatch.setattr(integration, "npu_fusion_attention", npu_doubles.npu_fusion_attention, raising=False)
    result = _run(recipe, tmp_path, "sim", "npu-sim")
    assert any("through transformers' npu_flash_attn_varlen_func" in n for n in result.notes)
    assert _same(_losses(result), unfused)


def _bsnd_one_sequence(query, key, value, cu_seq_lens, dropout, scale):
    """Wrong layout: the packed row given as one BSND sequence (samples attend to each other)."""
    out = npu_doubles.npu_fusion_attention(query[None], key[None], value[None], query.shape[1], "BSND",
                                           atten_mask=npu_fusion_attention.causal_mask(query.device), scale=scale,
                                           sparse_mode=3)[0]
    return out[0]


def _tnd(query, key, value, cu_seq_lens, dropout, scale, change):
    """portaft's TND call with `change` made to its arguments (a dict, or a function of the bounds)."""
    ends = tuple(cu_seq_lens[1:].tolist())
    call = dict(atten_mask=npu_fusion_attention.causal_mask(query.device), scale=scale, actual_seq_qlen=ends,
                actual_seq_kvlen=ends, sparse_mode=3)
    call.update(change(cu_seq_lens) if callable(change) else change)
    return npu_doubles.npu_fusion_attention(query, key, value, query.shape[1], "TND", **call)[0]


def _lengths(cu):
    lengths = tuple((cu[1:] - cu[:-1]).tolist())
    return {"actual_seq_qlen": lengths, "actual_seq_kvlen": lengths}


def _swapped_halves(module, x, *, swiglu, names):
    gate, up, down = (getattr(module, name) for name in names)
    return down(swiglu(torch.cat((up(x), gate(x)), dim=-1), dim=-1))


BREAKS = {
    "wrong layout": (npu_fusion_attention, "varlen", _bsnd_one_sequence),
    "per-sample lengths, not cumulative": (npu_fusion_attention, "varlen",
                                           lambda *a: _tnd(*a, change=_lengths)),
    "no causal mask": (npu_fusion_attention, "varlen",
                       lambda *a: _tnd(*a, change={"atten_mask": None, "sparse_mode": 0})),
    "sparse_mode 3 without its mask": (npu_fusion_attention, "varlen",
                                       lambda *a: _tnd(*a, change={"atten_mask": None})),
    "interleaved rotary": (npu_rotary_mul, "op",
                           lambda name: functools.partial(npu_doubles.npu_rotary_mul, rotary_mode="interleave")),
    "SwiGLU halves swapped": (npu_swiglu, "fused_forward", _swapped_halves),
}


@pytest.mark.parametrize("broken", [pytest.param(name, marks=[needs_flat_attention] if module is npu_fusion_attention
                                                  else []) for name, (module, _, _) in BREAKS.items()])
def test_each_wrong_call_fails_the_comparison(simulated, recipe, tmp_path, unfused, monkeypatch, broken):
    module, attribute, replacement = BREAKS[broken]
    monkeypatch.setattr(module, attribute, replacement)
    one_step = {**recipe, "train": {**recipe["train"], "max_steps": 1}}  # a wrong call shows at the first loss
    try:
        losses = _losses(_run(one_step, tmp_path, "broken", "npu-sim"))
    except ValueError as exc:  # the double refuses what the docs rule out
        assert "npu_fusion_attention" in str(exc)
        return
    assert len(losses) == 1 and not _same(losses, unfused[:1]), f"{broken}: the first loss stayed the same"
