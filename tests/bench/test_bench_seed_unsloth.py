"""bench/seed_unsloth.py without Unsloth: the text it hands SFTTrainer, the settings it hands Unsloth
and trl, and how it reads what the worker leaves (the real run is a GPU benchmark; see bench/README.md).
The last test runs the path itself where Unsloth is installed (SEED_UNSLOTH_SITE), else it is skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import seed_recipe
import seed_unsloth

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
ROWS = [{"conversation": [{"system": "be kind", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]},
        {"conversation": [{"input": "你好", "output": "好的，我在听。"}]}]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_the_conversations_become_the_text_portaft_trains_and_the_markers_cut_out_its_trained_tokens(
        tiny_model, tmp_path):
    data = write_rows(tmp_path / "chats-2.jsonl", ROWS)
    written = seed_unsloth.write_dataset(data, tiny_model, tmp_path / "us")
    assert written == tmp_path / "us" / "chats-2.jsonl"
    texts = [json.loads(line)["text"] for line in written.read_text(encoding="utf-8").splitlines()]
    # the system prompt kept, every turn, and the model's own template: a space after "Assistant:"
    assert texts == [f"{BOS}be kind\n\nUser: q1\n\nAssistant: a1{EOS}User: q2\n\nAssistant: a2{EOS}",
                     f"{BOS}User: 你好\n\nAssistant: 好的，我在听。{EOS}"]

    from transformers import AutoTokenizer

    import portaft.data
    from portaft.plugins import get_plugins

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    portaft.data.prepare_tokenizer(tokenizer)
    plugins = get_plugins()
    built = portaft.data.build(plugins.read_recipe(seed_recipe.recipe(tiny_model, data, tmp_path / "o", False)),
                               tokenizer, plugins)
    for text, sample in zip(texts, built.dataset):
        # SFTTrainer tokenizes the text to portaft's very ids (no second BOS: the tokenizer adds none)
        assert tokenizer(text)["input_ids"] == list(sample["input_ids"])
        # what follows each response marker up to the next instruction marker is what portaft trains
        replies = [part.split(seed_unsloth.INSTRUCTION_PART)[0] for part in text.split(seed_unsloth.RESPONSE_PART)[1:]]
        trained = [token for token, label in zip(sample["input_ids"], sample["labels"]) if label != -100]
        assert tokenizer.decode(trained) == "".join(replies)
        assert replies[0].startswith(" ") and replies[-1].endswith(EOS)


def test_the_seed_settings_land_in_unsloths_and_trls_arguments():
    chosen = seed_unsloth.settings(Path("m"), Path("t.jsonl"), Path("out"), seed_recipe.SEED_TRAIN, seed_recipe.LORA,
                                   seed_recipe.MAX_LENGTH, cuda=True)
    loading, lora, config = chosen["from_pretrained"], chosen["get_peft_model"], chosen["sft_config"]
    # 16-bit LoRA as the other paths, not Unsloth's default 4-bit QLoRA
    assert (loading["load_in_4bit"], loading["load_in_16bit"], loading["dtype"]) == (False, True, "bfloat16")
    assert loading["max_seq_length"] == config["max_length"] == 1024
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"], lora["bias"]) == (64, 128, 0.0, "none")
    assert lora["use_gradient_checkpointing"] == loading["use_gradient_checkpointing"] == "unsloth"
    assert lora["random_state"] == config["seed"] == 42
    assert (config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (2, 8)
    assert (config["learning_rate"], config["num_train_epochs"], config["bf16"], config["packing"]) == \
        (1e-4, 1, True, False)
    assert (config["dataset_text_field"], chosen["data"]) == ("text", "t.jsonl")
    assert chosen["responses_only"] == {"instruction_part": "User: ", "response_part": "Assistant:"}
    assert seed_unsloth.split_of(chosen) == {"micro_batch": 2, "accumulation": 8, "checkpointing": "unsloth"}
    # on the CPU (the smoke run) fp32, as the other paths; without checkpointing in the recipe, none
    cpu = seed_unsloth.settings(Path("m"), Path("t"), Path("o"), {**seed_recipe.SEED_TRAIN, "gradient_checkpointing":
                                                                  False}, seed_recipe.LORA, 1024, cuda=False)
    assert (cpu["from_pretrained"]["dtype"], cpu["sft_config"]["bf16"], cpu["sft_config"]["use_cpu"]) == \
        ("float32", False, True)
    assert seed_unsloth.split_of(cpu)["checkpointing"] is False
    with pytest.raises(ValueError, match="only all-linear"):
        seed_unsloth.settings(Path("m"), Path("t"), Path("o"), seed_recipe.SEED_TRAIN,
                              {**seed_recipe.LORA, "target_modules": ["q_proj"]}, 1024, cuda=True)


def test_the_named_layers_are_the_ones_peft_all_linear_picks(tiny_model):
    """Unsloth takes a list of names; the other paths say all-linear: the same layers of a Llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    picked = {name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters()
              if ".lora_A." in name}
    assert picked == set(seed_unsloth.ALL_LINEAR)


def test_results_are_read_from_the_worker_record_and_tokens_per_second_counts_every_token():
    history = [{"loss": 13.4232, "grad_norm": 10.41, "num_tokens": 882.0, "step": 1},
               {"loss": 13.0712, "num_tokens": 1239.0, "step": 2},
               {"train_runtime": 0.7009, "train_loss": 13.25, "step": 2}]
    record = {"log_history": history, "metrics": {"train_runtime": 0.7009}, "tokens": 1239, "samples": 24,
              "dropped_samples": 0, "backend": "cuda", "versions": {"unsloth": "2026.10.9"}, "peak_memory_gib": 31.5}
    assert seed_unsloth.read_results(record) == {
        "train_s": 0.7, "tokens": 1239, "trl_num_tokens": 1239.0, "trained_tokens_per_s": round(1239 / 0.7009, 1),
        "peak_gib": 31.5,
        "losses": [13.4232, 13.0712], "steps": 2, "last_loss": 13.0712, "dropped_samples": 0,
        "unsloth_backend": "cuda", "versions": {"unsloth": "2026.10.9"}}


def test_the_worker_runs_offline_with_its_own_packages_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    monkeypatch.setenv(seed_unsloth.SITE, "/tmp/site-us")
    env = seed_unsloth.worker_env(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == ["/tmp/site-us", "/tmp/site"]
    assert {key: env[key] for key in seed_unsloth.OFFLINE} == {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "UNSLOTH_DISABLE_STATISTICS": "1"}
    assert env["UNSLOTH_COMPILE_LOCATION"] == str(tmp_path / "unsloth_compiled_cache")


def test_without_unsloth_the_path_says_it_did_not_run(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.delenv(seed_unsloth.SITE, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "unsloth" else real(name, *a))
    result = seed_unsloth.run(tmp_path, "unsloth", Path("m"), tmp_path / "d.jsonl", seed_recipe.SEED_TRAIN,
                              seed_recipe.LORA, 1024, cuda=False)
    assert result == {"skipped": seed_unsloth.NO_UNSLOTH}
    assert f"| unsloth | not run: {seed_unsloth.NO_UNSLOTH} |" in seed_recipe.table({"paths": {"unsloth": result}})
    with pytest.raises(ValueError, match="unknown Unsloth path"):
        seed_unsloth.run(tmp_path, "unsloth-4bit", Path("m"), tmp_path, {}, {}, 1024, cuda=False)


@pytest.mark.skipif(not seed_unsloth.installed(), reason="Unsloth is not installed (SEED_UNSLOTH_SITE unset)")
def test_where_unsloth_is_installed_its_path_trains_portafts_tokens_to_the_same_losses(tmp_path):
    """Without a GPU Unsloth 2026.10 trains through its CPU backend (stock transformers, peft and
    trl): this checks the path's data, masking and settings, not Unsloth's kernels."""
    subprocess.run([sys.executable, str(REPO / "bench" / "seed_recipe.py"), "--shape", "tiny", "--conversations", "24",
                    "--paths", "as_written", "unsloth", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")],
                   check=True, capture_output=True, timeout=600)
    paths = json.loads((tmp_path / "o" / "seed-recipe.json").read_text())["runs"]["24"]["paths"]
    unsloth, portaft = paths["unsloth"], paths["as_written"]
    assert unsloth["unsloth_backend"] == ("cuda" if unsloth["peak_gib"] is not None else "cpu")
    assert unsloth["tokens"] == unsloth["trl_num_tokens"] == portaft["tokens"]
    assert unsloth["steps"] == portaft["steps"] == 2
    assert unsloth["losses"] == pytest.approx(portaft["losses"], rel=1e-6)
