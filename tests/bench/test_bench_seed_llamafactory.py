"""bench/seed_llamafactory.py without LLaMA-Factory: the files it hands LLaMA-Factory and how it
reads what LLaMA-Factory leaves (the real run is a GPU benchmark; see bench/README.md)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import seed_llamafactory  # noqa: E402

TRAIN = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "gradient_checkpointing": True,
         "learning_rate": 1e-4, "num_train_epochs": 1, "logging_steps": 1, "save_strategy": "no",
         "report_to": "none", "seed": 42}
LORA = {"r": 64, "alpha": 128, "dropout": 0.0, "target_modules": "all-linear"}


def test_the_conversations_become_a_sharegpt_file_and_its_dataset_info_entry(tmp_path):
    data = tmp_path / "chats-2.jsonl"
    rows = [{"conversation": [{"system": "be kind", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]},
            {"conversation": [{"input": "q", "output": "a"}]}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    name = seed_llamafactory.write_dataset(data, tmp_path / "lf")
    assert name == "chats-2"
    # LLaMA-Factory's sharegpt defaults: role tag `from`, content `value`, human/gpt alternating
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info == {"chats-2": {"file_name": "chats-2.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "system": "system"}}}
    written = json.loads((tmp_path / "lf" / "chats-2.json").read_text(encoding="utf-8"))
    assert written == [
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                           {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}], "system": "be kind"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": ""}]


def test_the_two_paths_carry_the_seed_settings_and_differ_only_in_split_liger_and_checkpointing(tmp_path):
    args = (Path("m"), tmp_path, "chats", tmp_path / "out", TRAIN, LORA, 1024)
    defaults = seed_llamafactory.config("llamafactory-defaults", *args, cuda=True)
    best = seed_llamafactory.config("llamafactory-best", *args, cuda=True)
    assert defaults["per_device_train_batch_size"] * defaults["gradient_accumulation_steps"] == 16
    assert (defaults["lora_rank"], defaults["lora_alpha"], defaults["lora_dropout"], defaults["lora_target"]) == \
        (64, 128, 0.0, "all")
    assert (defaults["template"], defaults["cutoff_len"], defaults["learning_rate"], defaults["bf16"]) == \
        ("deepseek", 1024, 1e-4, True)
    assert seed_llamafactory.split_of(defaults) == {"micro_batch": 2, "accumulation": 8, "checkpointing": True,
                                                    "liger_kernel": False}
    assert seed_llamafactory.split_of(best) == {"micro_batch": 16, "accumulation": 1, "checkpointing": False,
                                                "liger_kernel": True}
    changed = {key for key in best if best[key] != defaults.get(key)}
    assert changed == {"per_device_train_batch_size", "gradient_accumulation_steps", "enable_liger_kernel",
                       "disable_gradient_checkpointing"}
    # its best where 16 x 1 does not fit an 80 GB card: the same effective batch in two micro-batches
    fitting = seed_llamafactory.config("llamafactory-best-8x2", *args, cuda=True)
    assert {key for key in fitting if fitting[key] != best[key]} == {"per_device_train_batch_size",
                                                                     "gradient_accumulation_steps"}
    assert seed_llamafactory.split_of(fitting)["micro_batch"] * fitting["gradient_accumulation_steps"] == 16
    # on the CPU (the smoke run) precision follows the device and the Triton kernel is off
    cpu = seed_llamafactory.config("llamafactory-best", *args, cuda=False)
    assert cpu["bf16"] is False and cpu["enable_liger_kernel"] is False
    with pytest.raises(ValueError, match="unknown LLaMA-Factory path"):
        seed_llamafactory.config("llamafactory-fast", *args, cuda=True)


def test_results_are_read_from_what_llamafactory_leaves_and_tokens_per_second_counts_every_token(tmp_path):
    """The files as LLaMA-Factory 0.9.5 wrote them in a CPU run (24 conversations, 2 x 8)."""
    history = [{"epoch": 0.667, "grad_norm": 9.68, "learning_rate": 1e-4, "loss": 13.3964, "step": 1},
               {"epoch": 1.0, "grad_norm": 10.87, "learning_rate": 5e-05, "loss": 13.0560, "step": 2},
               {"epoch": 1.0, "step": 2, "train_loss": 13.2262, "train_runtime": 16.5753}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    # effective_tokens_per_sec = sum(len(input_ids)) x epoch / train_runtime (its calculate_tps)
    metrics = {"effective_tokens_per_sec": 1202 * 1.0 / 16.5753, "epoch": 1.0, "train_runtime": 16.5753}
    (tmp_path / "train_results.json").write_text(json.dumps(metrics))
    read = seed_llamafactory.read_results(tmp_path)
    assert read == {"train_s": 16.6, "tokens": 1202, "trained_tokens_per_s": round(1202 / 16.5753, 1),
                    "losses": [13.3964, 13.0560], "steps": 2, "last_loss": 13.0560}
