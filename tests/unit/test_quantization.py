"""QLoRA's `quantization:` section: refused with the reason where it cannot run, before
any model is loaded (the real 4-bit run is in tests/gpu/test_gpu.py)."""

import pytest

import portaft
from portaft import UserError, load_recipe
from portaft.cli import main

QLORA = {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "bf16"}


def test_the_cpu_backend_refuses_quantization_before_loading_anything(recipe_dict, write_recipe, capsys, monkeypatch):
    from portaft.backends import TransformersBackend

    def never(*_):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(TransformersBackend, "load_model", never)
    monkeypatch.setattr(TransformersBackend, "load_tokenizer", never)
    code = main(["run", str(write_recipe({**recipe_dict, "quantization": QLORA})), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "quantization: 4-bit loading cannot run with the cpu backend: portaft runs bitsandbytes only on CUDA GPUs" in err
    assert "Remove the quantization section" in err and "Traceback" not in err


def test_device_cpu_refuses_it_for_the_cuda_backend_too(recipe_dict):
    recipe = load_recipe({**recipe_dict, "device": "cpu", "quantization": QLORA})
    with pytest.raises(UserError, match="cannot run with device: cpu"):
        portaft.get_backend("cuda").resolve(recipe)


def test_the_npu_backend_refuses_it(recipe_dict, monkeypatch):
    from portaft.backends import npu

    monkeypatch.setattr(npu.NpuBackend, "device", lambda self: npu.Device(
        "npu", bf16=True, fp16=True, fused_optimizer=None, collectives="hccl",
        cannot={"quantization": "portaft runs bitsandbytes only on CUDA GPUs; its Ascend support is not verified"}))
    with pytest.raises(UserError, match="cannot run with the npu backend: .*Ascend support is not verified"):
        portaft.get_backend("npu").resolve(load_recipe({**recipe_dict, "quantization": QLORA}))


def test_cuda_without_bitsandbytes_says_how_to_install_it(recipe_dict, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError, match=r"bitsandbytes is not installed \(pip install 'portaft\[qlora\]'\)"):
        portaft.get_backend("cuda").resolve(load_recipe({**recipe_dict, "quantization": QLORA}))


def test_compute_dtype_follows_the_device_and_defaults_are_qlora(recipe_dict, monkeypatch):
    from portaft.backends import cuda

    monkeypatch.setattr(cuda.CudaBackend, "device", lambda self: cuda.Device(  # a V100 with bitsandbytes
        "cuda", bf16=False, fp16=True, fused_optimizer="adamw_torch_fused", collectives="nccl"))
    effective, notes = portaft.get_backend("cuda").resolve(load_recipe({**recipe_dict, "quantization": {}}))
    assert effective.quantization.bits == 4 and effective.quantization.type == "nf4"
    assert effective.quantization.double_quant is True
    assert effective.quantization.compute_dtype == "fp16"
    assert "quantization.compute_dtype: bf16 -> fp16 (cuda has no bfloat16 here)" in notes


def test_quantized_full_finetuning_is_a_recipe_error(recipe_dict, write_recipe, capsys):
    code = main(["validate", str(write_recipe({**recipe_dict, "finetune": "full", "quantization": QLORA}))])
    assert code == 2
    assert "quantized weights cannot be trained" in capsys.readouterr().err


def test_unknown_quantization_values_name_the_path(recipe_dict, write_recipe, capsys):
    code = main(["validate", str(write_recipe({**recipe_dict, "quantization": {"bits": 3, "typ": "nf4"}}))])
    err = capsys.readouterr().err
    assert code == 2 and "quantization.bits" in err and "quantization.typ: unknown key. Did you mean `type`?" in err
