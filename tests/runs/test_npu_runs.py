"""The npu backend: its device module simulated (with and without a working torch_npu),
and its openMind library path run for real on the CPU (`device: cpu`) where openmind is
installed (the second CI environment, scripts/openmind-env.sh)."""

import importlib.util
import json
import subprocess
import sys

import pytest

import portaft
from portaft import UserError

has_openmind = importlib.util.find_spec("openmind") is not None
needs_openmind = pytest.mark.skipif(not has_openmind, reason="openmind is not installed (scripts/openmind-env.sh)")


def test_a_run_on_another_backend_never_imports_openmind_or_torch_npu(recipe_dict, write_recipe):
    recipe = write_recipe({**recipe_dict, "train": {**recipe_dict["train"], "max_steps": 1}})
    code = ("import sys, portaft; portaft.run(sys.argv[1], backend='cpu', echo=lambda _: None); "
            "print(sorted(m for m in ('openmind', 'torch_npu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@needs_openmind
def test_the_openmind_path_trains_on_the_cpu_exactly_like_the_cpu_backend(recipe_dict, tmp_path):
    """cpu vs npu-on-cpu: same seed, data and fp32: the same losses, bit for bit."""
    cpu = portaft.run({**recipe_dict, "train": {**recipe_dict["train"], "output_dir": str(tmp_path / "cpu")}},
                      backend="cpu", echo=lambda _: None)
    npu = portaft.run({**recipe_dict, "device": "cpu", "train": {**recipe_dict["train"], "output_dir": str(tmp_path / "npu")}},
                      backend="npu", echo=lambda _: None)
    assert any(n.startswith("npu: openMind") for n in npu.notes)
    cpu_losses = [e["loss"] for e in cpu.log_history if "loss" in e]
    npu_losses = [e["loss"] for e in npu.log_history if "loss" in e]
    assert len(npu_losses) == 4 and npu_losses == cpu_losses
    assert getattr(sys, "tracebacklimit", None) is None  # openmind's import set it to 0; portaft undid it

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name_or_path"])
    PeftModel.from_pretrained(base, npu.output_dir)
    record = json.loads((npu.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["backend"] == "npu" and record["device"] == "cpu"


@needs_openmind
def test_the_openmind_path_refuses_a_hub_id(recipe_dict):
    recipe = {**recipe_dict, "device": "cpu", "model": {"name_or_path": "deepseek-ai/deepseek-llm-7b-chat"}}
    with pytest.raises(UserError, match="is not a local folder"):
        portaft.run(recipe, backend="npu", echo=lambda _: None)


def test_a_folder_saved_by_transformers_5_trains_on_the_npu_backend(recipe_dict, tiny_model, tmp_path, monkeypatch):
    """Merged on a CUDA box by transformers 5, trained again through the npu backend's library
    (openMind's transformers 4.45 in its CI environment): its tokenizer.json is loaded."""
    import shutil

    import transformers

    folder = tmp_path / "merged-on-cuda"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "TokenizersBackend"  # what transformers 5 writes
    if hasattr(transformers, "TokenizersBackend"):  # this transformers has it: name one it lacks, act as 4.45
        config["tokenizer_class"] = "TokenizersBackendOfTheFuture"
        monkeypatch.setattr("portaft.backends.npu.library_falls_back_itself", lambda: False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    recipe = {**recipe_dict, "device": "cpu", "model": {"name_or_path": str(folder)},
              "train": {**recipe_dict["train"], "max_steps": 2}}
    result = portaft.run(recipe, backend="npu", echo=lambda _: None)
    assert any(n.startswith(f"tokenizer: {config['tokenizer_class']} (tokenizer_config.json) is not in this "
                            "transformers") for n in result.notes)
    assert len([e for e in result.log_history if "loss" in e]) == 2
    assert (result.output_dir / "tokenizer.json").is_file()
