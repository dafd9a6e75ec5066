"""A real LoRA fine-tune of the tiny model on the CPU, and what it leaves behind."""

import json

import pytest
import torch
import yaml

import portaft

from conftest import identity_recipe


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = identity_recipe(tmp, tiny_model, output_dir=str(tmp / "out"), max_steps=12, save_steps=6)
    lines: list[str] = []
    result = portaft.run(recipe, backend="cpu", echo=lines.append)
    return result, lines, tiny_model


def test_loss_falls(trained):
    result, _, _ = trained
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3


def test_output_folder_holds_adapter_checkpoints_recipe_and_record(trained):
    result, _, _ = trained
    out = result.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "portaft_recipe.yaml", "portaft_run.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint-6").is_dir() and (out / "checkpoint-12").is_dir()
    effective = yaml.safe_load((out / "portaft_recipe.yaml").read_text(encoding="utf-8"))
    assert effective["backend"] == "cpu" and effective["model"]["dtype"] == "float32"
    assert effective["train"]["use_cpu"] is True
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["backend"] == "cpu" and record["template"] == "deepseek"
    assert {"torch", "transformers", "peft", "python"} <= set(record["versions"])
    assert record["data"][0]["samples"] == 4
    assert record["metrics"]["train_loss"] > 0
    assert [e["step"] for e in record["log_history"] if "loss" in e] == list(range(1, 13))
    assert any("model.dtype: auto -> float32" in n for n in record["notes"])


def test_saved_tokenizer_carries_the_training_template(trained):
    from transformers import AutoTokenizer

    from portaft.data.chat_templates import DEEPSEEK

    result, _, _ = trained
    assert AutoTokenizer.from_pretrained(result.output_dir).chat_template == DEEPSEEK


def test_adapter_loads_with_plain_peft_and_reproduces_the_trained_model(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, _, tiny_model = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    probe = torch.tensor([[0, 53, 271, 6756, 28]])
    with torch.no_grad():
        before = base(probe).logits
        model = PeftModel.from_pretrained(base, result.output_dir)
        after = model(probe).logits
    assert not torch.allclose(before, after)  # the adapter changes the model
    record = json.loads((result.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    # the answer portaft printed after training is what plain peft + transformers generate
    from portaft.samples import answer_prompts
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    again = answer_prompts(model, tokenizer, tokenizer.chat_template, ["你是谁？"])
    assert again == record["samples"]["after"]


def test_run_prints_samples_before_and_after(trained):
    result, lines, _ = trained
    text = "\n".join(lines)
    assert "before training: Q: 你是谁？" in text and "after training: Q: 你是谁？" in text
    assert result.samples_before[0]["answer"] != result.samples_after[0]["answer"]
    assert "backend cpu" in lines[0]


def test_eval_prompts_are_asked_with_the_recipes_system_prompt(tiny_model, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    import portaft.samples
    from portaft.data.chat_templates import DEEPSEEK

    seen = []
    real_render = portaft.samples.render
    monkeypatch.setattr(portaft.samples, "render", lambda tok, tpl, messages, **kw: seen.append(messages) or
                        real_render(tok, tpl, messages, **kw))
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    portaft.samples.answer_prompts(model, tokenizer, DEEPSEEK, ["你是谁？"], max_new_tokens=1, system="你是黄大力的助手。")
    assert seen == [[{"role": "system", "content": "你是黄大力的助手。"}, {"role": "user", "content": "你是谁？"}]]


def test_an_eval_prompt_may_be_a_conversation(tiny_model, tokenizer, monkeypatch, recipe_dict):
    from transformers import AutoModelForCausalLM

    import portaft.samples
    from portaft.data.chat_templates import DEEPSEEK

    seen = []
    real_render = portaft.samples.render
    monkeypatch.setattr(portaft.samples, "render", lambda tok, tpl, messages, **kw: seen.append(messages) or
                        real_render(tok, tpl, messages, **kw))
    turns = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
             {"role": "user", "content": "你是谁？"}]
    recipe = portaft.load_recipe({**recipe_dict, "eval_prompts": ["Who?", turns]})
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    answers = portaft.samples.answer_prompts(model, tokenizer, DEEPSEEK, recipe.eval_prompts, max_new_tokens=1,
                                             system="S")
    assert seen[1] == [{"role": "system", "content": "S"}, *turns]
    assert answers[1]["prompt"] == "你是谁？" and answers[1]["conversation"] == turns
    assert "conversation" not in answers[0]
    with pytest.raises(portaft.RecipeError, match=r"eval_prompts\[0\]: a conversation that does not end with a user"):
        portaft.load_recipe({**recipe_dict, "eval_prompts": [turns[:2]]})


def test_eval_every_answers_while_training_and_keeps_the_step(recipe_dict, tmp_path):
    lines: list[str] = []
    recipe = {**recipe_dict, "eval_prompts": ["你是谁？"], "eval_every": 2}
    result = portaft.run(recipe, backend="cpu", echo=lines.append)
    assert [entry["step"] for entry in result.samples_during] == [2, 4]
    assert all(entry["answers"][0]["prompt"] == "你是谁？" for entry in result.samples_during)
    assert any(line.startswith("portaft: step 2: Q: 你是谁？") for line in lines)
    record = json.loads((result.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    assert [entry["step"] for entry in record["samples"]["during"]] == [2, 4]


def test_eval_every_without_prompts_is_a_recipe_error(recipe_dict):
    with pytest.raises(portaft.RecipeError, match="eval_every is set but eval_prompts is empty"):
        portaft.load_recipe({**recipe_dict, "eval_every": 5})


def test_dora_trains_an_adapter_that_peft_loads_as_dora(recipe_dict):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = portaft.run({**recipe_dict, "lora": {**recipe_dict["lora"], "use_dora": True}},
                         backend="cpu", echo=lambda _: None)
    config = json.loads((result.output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["use_dora"] is True
    base = AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name_or_path"])
    loaded = PeftModel.from_pretrained(base, result.output_dir)
    assert any("lora_magnitude_vector" in name for name, _ in loaded.named_parameters())


def test_full_finetuning_updates_every_weight_and_saves_a_whole_model(recipe_dict):
    from transformers import AutoModelForCausalLM

    lines: list[str] = []
    result = portaft.run({**recipe_dict, "finetune": "full", "train": {**recipe_dict["train"], "learning_rate": 1e-3}},
                         backend="cpu", echo=lines.append)
    assert any(line.startswith("portaft: trainable parameters:") and "(100.00%)" in line for line in lines)
    assert not (result.output_dir / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name_or_path"])
    tuned = AutoModelForCausalLM.from_pretrained(result.output_dir)
    changed = [name for (name, a), (_, b) in zip(base.named_parameters(), tuned.named_parameters())
               if not torch.equal(a, b)]
    assert len(changed) == len(list(base.parameters()))  # every weight moved, embeddings included


def test_a_tokenizer_bigger_than_the_models_embeddings_is_refused(tokenizer, recipe_dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    from portaft.runner.model import _check_vocabulary

    small = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(portaft.UserError, match=r"has 129,280 tokens but the model only 1,000 embeddings"):
        _check_vocabulary(small, tokenizer, portaft.load_recipe(recipe_dict))
