"""portaft chat: a trained model answering in the template it was trained with."""

import io
import json

import pytest

import portaft
import portaft.samples
from portaft.cli import main

SYSTEM = "你是黄大力的智能助手。"


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    data = tmp / "identity.jsonl"
    rows = [{"conversation": [{"input": q, "output": "我是黄大力的智能助手。"}]}
            for q in ("你是谁？", "你叫什么？", "介绍一下你自己。", "Who are you?")]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    recipe = {
        "model": {"name_or_path": str(tiny_model)}, "data": [{"path": str(data)}], "template": "deepseek",
        "max_length": 64, "system": SYSTEM, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"output_dir": str(tmp / "out"), "max_steps": 12, "per_device_train_batch_size": 4,
                  "learning_rate": 1e-2, "report_to": "none", "save_steps": 12, "seed": 7},
        "eval_prompts": ["你是谁？"],
    }
    result = portaft.run(recipe, backend="cpu", echo=lambda _: None)
    assert result.samples_after[0]["answer"].startswith("我是黄大力的智能助手")  # an answer worth comparing
    return result


@pytest.fixture
def rendered(monkeypatch):
    """Every conversation the chat renders for the model, and the text it became."""
    seen = []
    real_render = portaft.samples.render

    def spy(tokenizer, template, messages, **kwargs):
        text = real_render(tokenizer, template, messages, **kwargs)
        seen.append((messages, text))
        return text

    monkeypatch.setattr(portaft.samples, "render", spy)
    return seen


def test_prompt_prints_exactly_the_greedy_answer_the_run_gave_and_nothing_else(run, capsys):
    after = run.samples_after[0]
    assert after["prompt"] == "你是谁？"
    argv = ["chat", str(run.output_dir), "--prompt", "你是谁？", "--device", "cpu", "--max-new-tokens", "48"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out == after["answer"] + "\n"  # the run's system prompt, template and stop tokens
    assert "portaft: loading" in printed.err


def test_a_checkpoint_and_a_merged_folder_answer_as_the_run_output_does(run, tmp_path, capsys):
    answer = run.samples_after[0]["answer"] + "\n"
    argv = ["--prompt", "你是谁？", "--max-new-tokens", "48"]
    assert main(["chat", str(run.output_dir / "checkpoint-12"), *argv]) == 0  # the last checkpoint: the final weights
    assert capsys.readouterr().out == answer
    assert main(["merge", str(run.output_dir), "--to", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    assert main(["chat", str(tmp_path / "merged"), *argv]) == 0
    assert capsys.readouterr().out == answer


def test_the_runs_system_prompt_is_the_default_and_system_replaces_it(run, rendered, capsys):
    assert main(["chat", str(run.output_dir), "--prompt", "hi", "--max-new-tokens", "1"]) == 0
    assert main(["chat", str(run.output_dir), "--prompt", "hi", "--max-new-tokens", "1", "--system", "Be brief."]) == 0
    assert main(["chat", str(run.output_dir), "--prompt", "hi", "--max-new-tokens", "1", "--system", ""]) == 0
    assert [messages[0] for messages, _ in rendered] == [
        {"role": "system", "content": SYSTEM}, {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_piped_turns_keep_the_conversation_until_clear_and_exit_stops(run, rendered, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("你是谁？\nWho made you?\n/clear\nhello\n/exit\nnever asked\n"))
    assert main(["chat", str(run.output_dir), "--max-new-tokens", "8"]) == 0
    replies = capsys.readouterr().out.splitlines()
    assert len(replies) == 3 and len(rendered) == 3
    (first, _), (second, second_text), (third, _) = rendered
    assert second[1:] == [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": replies[0]},
                          {"role": "user", "content": "Who made you?"}]
    assert "你是谁？" in second_text and replies[0] in second_text  # the first turn is in the second prompt
    assert third == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]  # after /clear


def test_sampling_answers_with_temperature_top_k_and_top_p(run, capsys):
    argv = ["chat", str(run.output_dir), "--prompt", "你是谁？", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9",
            "--max-new-tokens", "4"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("case", ["missing folder", "no chat template", "bad sampling", "unavailable device"])
def test_refusals_say_what_is_wrong_and_exit_2(run, tiny_model, tmp_path, capsys, case):
    argv, message = {
        "missing folder": (["chat", str(tmp_path / "nowhere")], "no such folder"),
        # the tiny base model's tokenizer has no chat template of its own
        "no chat template": (["chat", str(tiny_model), "--prompt", "hi"], "its tokenizer has no chat template"),
        "bad sampling": (["chat", str(run.output_dir), "--temperature", "-1", "--top-p", "0"],
                         "--temperature -1.0: 0 (greedy) or more; --top-p 0.0: above 0, at most 1."),
        "unavailable device": (["chat", str(run.output_dir), "--device", "npu"], "backend 'npu' is not available"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
