"""portaft merge: a run's adapter folded into its base model, a folder transformers loads alone."""

import json
import shutil

import pytest
import torch
import yaml

import portaft
from portaft.after import merge as merging
from portaft.cli import main

PROBE = torch.tensor([[0, 53, 271, 6756, 28, 100, 2000]])


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A trained adapter over a copy of the tiny model that also holds what real model folders do."""
    tmp = tmp_path_factory.mktemp("merge")
    base = tmp / "base"
    shutil.copytree(tiny_model, base)
    (base / "LICENSE").write_text("the base model's licence", encoding="utf-8")
    (base / "modeling_custom.py").write_text("# remote code a trust_remote_code model needs\n", encoding="utf-8")
    (base / "original").mkdir()
    (base / "original" / "params.json").write_text("{}", encoding="utf-8")
    (base / "original" / "consolidated.00.pth").write_bytes(b"weights")
    (base / "optimizer.pt").write_bytes(b"weights")
    data = tmp / "identity.jsonl"
    rows = [{"conversation": [{"input": q, "output": "我是黄大力的智能助手。"}]} for q in ("你是谁？", "Who are you?")]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    recipe = {
        "model": {"name_or_path": str(base)}, "data": [{"path": str(data)}], "template": "deepseek", "max_length": 64,
        "system": "你是黄大力的智能助手。", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"output_dir": str(tmp / "out"), "max_steps": 3, "per_device_train_batch_size": 2,
                  "learning_rate": 1e-2, "report_to": "none", "save_strategy": "no", "seed": 3},
    }
    result = portaft.run(recipe, backend="cpu", echo=lambda _: None)
    return result.output_dir, base


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROBE).logits


def test_merged_model_loads_with_transformers_alone_and_computes_what_base_plus_adapter_does(run, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from portaft.data.chat_templates import DEEPSEEK

    out, base = run
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(out), "--to", str(merged_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"merged model saved in {merged_dir}: 1 shard" in printed and "logits check: max |merged" in printed
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(base))
    assert not torch.allclose(logits(merged), base_logits, atol=1e-3)  # the training changed the merged weights
    torch.testing.assert_close(logits(merged), logits(adapted), atol=1e-4, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template == DEEPSEEK
    assert merged.dtype == torch.float32  # --dtype auto: what the cpu run trained in


def test_a_tiny_max_shard_size_writes_several_shards_and_their_index(run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out, _ = run
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(out), "--to", str(merged_dir), "--max-shard-size", "1MB"]) == 0
    shards = sorted(p.name for p in merged_dir.glob("*.safetensors"))
    assert len(shards) > 1
    index = json.loads((merged_dir / "model.safetensors.index.json").read_text(encoding="utf-8"))
    assert sorted(set(index["weight_map"].values())) == shards
    assert f"{len(shards)} shards" in capsys.readouterr().out
    AutoModelForCausalLM.from_pretrained(merged_dir)


def test_the_base_models_other_files_are_copied_but_never_its_weights(run, tmp_path):
    out, base = run
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(out), "--to", str(merged_dir)]) == 0
    assert (merged_dir / "LICENSE").read_text(encoding="utf-8") == "the base model's licence"
    assert (merged_dir / "modeling_custom.py").is_file()
    assert (merged_dir / "original" / "params.json").is_file()
    assert not (merged_dir / "original" / "consolidated.00.pth").exists()
    assert not (merged_dir / "optimizer.pt").exists()
    # the merged weights are the merge's own, not the base's copied over them
    assert (merged_dir / "model.safetensors").read_bytes() != (base / "model.safetensors").read_bytes()


def test_overwrite_replaces_the_previous_merges_shards(run, tmp_path, capsys):
    out, _ = run
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(out), "--to", str(merged_dir), "--max-shard-size", "1MB"]) == 0
    assert main(["merge", str(out), "--to", str(merged_dir)]) == 2
    assert "the folder is not empty" in capsys.readouterr().err
    assert main(["merge", str(out), "--to", str(merged_dir), "--overwrite"]) == 0
    assert [p.name for p in merged_dir.glob("*.safetensors")] == ["model.safetensors"]
    assert not (merged_dir / "model.safetensors.index.json").exists()


def test_a_merge_that_changes_the_logits_is_refused_and_nothing_is_saved(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(merging.RELATIVE_TOLERANCE, "float32", -1.0)  # any difference at all fails the check
    out, _ = run
    assert main(["merge", str(out), "--to", str(tmp_path / "merged")]) == 3
    err = capsys.readouterr().err
    assert "logits check" in err and "nothing was saved" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()


def copy_output(out, to, **recipe_changes):
    shutil.copytree(out, to)
    recipe = yaml.safe_load((to / "portaft_recipe.yaml").read_text(encoding="utf-8"))
    for path, value in recipe_changes.items():
        section, key = path.split("__")
        recipe[section][key] = value
    (to / "portaft_recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return to


def refusal(tmp_path, run, case):
    out, base = run
    to = str(tmp_path / "merged")
    if case == "missing folder":
        return ["merge", str(tmp_path / "nowhere"), "--to", to], "no such folder"
    if case == "not a run output":
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("hi")
        return ["merge", str(tmp_path / "other"), "--to", to], "not a portaft run output"
    if case == "full fine-tune":
        full = tmp_path / "full"
        shutil.copytree(base, full)
        shutil.copy(out / "portaft_recipe.yaml", full)
        recipe = yaml.safe_load((full / "portaft_recipe.yaml").read_text(encoding="utf-8"))
        (full / "portaft_recipe.yaml").write_text(yaml.safe_dump({**recipe, "finetune": "full"}), encoding="utf-8")
        return ["merge", str(full), "--to", to], "already a whole model (finetune: full"
    if case == "base model gone":
        moved = copy_output(out, tmp_path / "moved", model__name_or_path=str(tmp_path / "gone"))
        return ["merge", str(moved), "--to", to], f"the model '{tmp_path / 'gone'}' (model.name_or_path in"
    if case == "non-empty target":
        (tmp_path / "merged").mkdir()
        (tmp_path / "merged" / "keep.txt").write_text("mine")
        return ["merge", str(out), "--to", to], "the folder is not empty. Choose a new folder, or pass --overwrite"
    if case == "bad shard size":
        return ["merge", str(out), "--to", to, "--max-shard-size", "lots"], "--max-shard-size 'lots': not a size"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing folder", "not a run output", "full fine-tune", "base model gone",
                                  "non-empty target", "bad shard size"])
def test_refusals_say_what_is_wrong_and_exit_2(run, tmp_path, capsys, case):
    argv, message = refusal(tmp_path, run, case)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "merged" / "config.json").exists()


def test_a_moved_base_is_found_with_base(run, tmp_path, capsys):
    out, base = run
    moved = copy_output(out, tmp_path / "moved", model__name_or_path="somewhere/that/moved")
    assert main(["merge", str(moved), "--to", str(tmp_path / "merged"), "--base", str(base)]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.parametrize("text, size", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1GiB", 2**30), ("1000", 1000)])
def test_shard_sizes_are_read_as_transformers_reads_them(text, size):
    assert merging.parse_size(text) == size


def test_a_bfloat16_merge_is_the_float32_merge_rounded_once(run, tmp_path):
    from safetensors.torch import load_file

    out, _ = run
    assert main(["merge", str(out), "--to", str(tmp_path / "f32")]) == 0
    assert main(["merge", str(out), "--to", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    exact, halved = load_file(str(tmp_path / "f32" / "model.safetensors")), load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert exact.keys() == halved.keys()
    for name, weight in exact.items():
        assert halved[name].dtype == torch.bfloat16 and torch.equal(halved[name], weight.to(torch.bfloat16)), name
