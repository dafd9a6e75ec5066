"""A new user's own minimal recipe (model, data, template, output folder, an eval split),
trained through the command line: what it learns, logs, leaves and says."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from helpers import cli as portaft

QUESTIONS = ("你是谁？", "你叫什么？", "介绍一下你自己。", "Who are you?", "你好", "你能做什么？", "谁开发了你？",
             "What is your name?")


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first-hour")
    rows = [{"conversation": [{"input": f"{q} ({i})", "output": "我是黄大力的智能助手。"}]}
            for i in range(10) for q in QUESTIONS]
    (tmp / "mine.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    recipe = {"model": {"name_or_path": str(tiny_model)}, "data": [{"path": str(tmp / "mine.jsonl")}],
              "template": "deepseek", "val_size": 0.1, "train": {"output_dir": str(tmp / "output" / "mine")},
              "eval_prompts": ["你是谁？"], "eval_max_new_tokens": 4}
    path = tmp / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    done = portaft("run", path, "--backend", "cpu", "train.report_to=none", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, tmp / "output" / "mine", done


def logged(out):
    return [json.loads(line) for line in (out / "portaft_log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_minimal_recipe_learns_with_portafts_defaults_and_says_where_they_came_from(first_run):
    _, out, _ = first_run
    effective = (out / "portaft_recipe.yaml").read_text(encoding="utf-8")
    train = yaml.safe_load(effective)["train"]
    assert train["learning_rate"] == 2e-4 and train["logging_steps"] == 0.025
    assert "train.learning_rate: unset -> 0.0002 (portaft's LoRA default" in effective
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    losses = [e["loss"] for e in record["log_history"] if "loss" in e]
    assert len(losses) >= 20  # 72 training samples, batch 8, 3 epochs: 27 steps, each logged
    assert sum(losses[-3:]) < sum(losses[:3])


def test_the_final_folder_holds_no_pickle(first_run):
    _, out, _ = first_run
    assert not (out / "training_args.bin").exists()
    assert list(out.glob("checkpoint-*/training_args.bin"))  # resuming reads them there


def test_val_size_holds_out_a_share_evaluated_while_training(first_run):
    _, out, done = first_run
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["data"][0]["held_out"] == 8 and record["data"][0]["samples"] == 72
    assert record["data"][0]["dropped"] == 0  # held out is not dropped
    evaluations = [e["eval_loss"] for e in record["log_history"] if "eval_loss" in e]
    assert len(evaluations) >= 5
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"{len(evaluations)} evaluations: first {evaluations[0]:.4f}" in report
    assert "eval loss" in done.stdout + done.stderr


def test_the_live_log_has_a_line_per_logging_step(first_run):
    _, out, _ = first_run
    entries = logged(out)
    assert entries[0]["event"] == "start" and entries[-1]["event"] == "end"
    steps = [e for e in entries if "loss" in e and "event" not in e]
    assert len(steps) >= 20
    for entry in steps:
        assert {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s"} \
            <= set(entry)
        assert entry["tokens_per_s"] > 0
    assert steps[-1]["eta_s"] == 0 and steps[0]["eta_s"] > 0
    assert any("eval_loss" in e for e in entries)


def test_known_library_warnings_are_kept_in_the_log_not_shown(first_run):
    _, out, done = first_run
    kept = [e for e in logged(out) if e.get("event") == "warning"]
    assert all(e["category"] in ("FutureWarning", "DeprecationWarning", "UserWarning") for e in kept)
    assert "FutureWarning" not in done.stderr and "DeprecationWarning" not in done.stderr
    assert len({(e["message"], e["where"]) for e in kept}) == len(kept)  # first occurrence only


def test_run_says_where_its_outputs_went_and_how_to_chat(first_run):
    _, out, done = first_run
    assert f"portaft: outputs in {out}/" in done.stdout
    assert f"portaft: chat with the result:  portaft chat {out}" in done.stdout


def test_runs_lists_finished_running_and_stopped_runs(first_run, tmp_path):
    tmp, out, _ = first_run
    stopped = tmp / "output" / "killed"
    stopped.mkdir()
    (stopped / "portaft_log.jsonl").write_text(
        json.dumps({"event": "start", "time": time.time(), "pid": 2**22 + 7, "host": "elsewhere", "step": 0,
                    "max_steps": 50}) + "\n" + json.dumps({"step": 5, "loss": 3.25}) + "\n", encoding="utf-8")
    old = time.time() - 3600
    os.utime(stopped / "portaft_log.jsonl", (old, old))
    running = tmp / "output" / "live"
    running.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (running / "portaft_log.jsonl").write_text(json.dumps(
            {"event": "start", "time": time.time(), "pid": sleeper.pid, "host": socket.gethostname(), "step": 0,
             "max_steps": 9}) + "\n" + json.dumps({"step": 2, "loss": 1.5}) + "\n", encoding="utf-8")
        done = portaft("runs", tmp / "output")
    finally:
        sleeper.kill()
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert lines["mine"][1] == "finished" and lines["mine"][2] == "27/27"
    assert lines["killed"][1:4] == ["stopped", "5/50", "3.2500"]
    assert lines["live"][1:4] == ["running", "2/9", "1.5000"]
    assert portaft("runs", tmp / "nowhere").returncode == 2


def test_eval_answers_keep_to_the_recipes_token_budget(first_run, tiny_model):
    from transformers import AutoTokenizer

    _, out, _ = first_run
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for moment in ("before", "after"):
        answer = record["samples"][moment][0]["answer"]
        # 4 tokens generated (re-tokenizing the text may split them); 48 without the key
        assert 0 < len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 8
