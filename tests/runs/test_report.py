"""What a finished run leaves for people (report.md, loss.png), and `portaft compare` across runs."""

import json
import re
from pathlib import Path

import pytest

import portaft
import portaft.runner.report
from conftest import identity_recipe
from portaft.after import compare
from portaft.cli import main
from portaft.runner.report import cell, loss_figure, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tiny_model, tmp_path_factory):
    """Two real 4-step LoRA runs of the tiny model that differ only in their learning rate."""
    tmp = tmp_path_factory.mktemp("runs")
    folders = []
    for name, lr in (("fast", 1e-2), ("slow", 2e-3)):
        recipe = {**identity_recipe(tmp, tiny_model, output_dir=str(tmp / name), max_steps=4, learning_rate=lr,
                                    save_strategy="no"), "eval_every": 2}
        result = portaft.run(recipe, backend="cpu", echo=lambda _: None)
        folders.append(result.output_dir)
    return folders


def record_of(folder):
    return json.loads((folder / "portaft_run.json").read_text(encoding="utf-8"))


def logged(record, key):
    return [entry[key] for entry in record["log_history"] if key in entry]


def assert_is_a_drawn_png(path):
    import matplotlib.image
    import numpy

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000
    pixels = matplotlib.image.imread(path)
    assert len(numpy.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # lines and text, not a blank page


# --- report.md and loss.png of one run ---------------------------------------------------------

def test_report_states_what_ran_with_the_runs_own_numbers(two_runs):
    record = record_of(two_runs[0])
    text = (two_runs[0] / "report.md").read_text(encoding="utf-8")
    losses, steps = logged(record, "loss"), [e["step"] for e in record["log_history"] if "loss" in e]
    assert f"| first loss | {losses[0]:.4f} (step {steps[0]}) |" in text
    assert f"| last loss | {losses[-1]:.4f} (step {steps[-1]}) |" in text
    assert f"| lowest loss | {min(losses):.4f} (step {steps[losses.index(min(losses))]}) |" in text
    assert f"| mean loss (train_loss) | {record['metrics']['train_loss']:.4f} |" in text
    assert f"| training time | {record['metrics']['train_runtime']:.1f} s" in text
    assert "| backend | cpu (device cpu, 1 process) |" in text
    assert "| finetune | LoRA: r 8, alpha 16, dropout 0, target all-linear |" in text
    assert "| learning rate | 0.01 |" in text and "| length | max_steps 4 |" in text
    assert "| batch | 4 per device x 1 accumulation x 1 process = 4 |" in text
    assert "| schedule | linear (default) |" in text
    assert "| precision | fp32 |" in text
    assert all(f"- {note}" in text for note in record["notes"])
    assert f"| transformers | {record['versions']['transformers']} |" in text
    assert "](loss.png)" in text


def test_report_data_table_holds_each_sources_counts(two_runs):
    source = record_of(two_runs[0])["data"][0]
    text = (two_runs[0] / "report.md").read_text(encoding="utf-8")
    counts = [source[c] for c in ("records", "bad", "samples", "tokens", "trained_tokens", "truncated", "dropped")]
    assert source["samples"] == 4 and source["tokens"] > source["trained_tokens"] > 0
    assert f"| {source['path']} (xtuner) | " + " | ".join(map(str, counts)) + " |" in text


def test_report_shows_each_answer_before_during_and_after_training(two_runs):
    samples = record_of(two_runs[0])["samples"]
    text = (two_runs[0] / "report.md").read_text(encoding="utf-8")
    moments = [("before training", samples["before"][0])]
    moments += [(f"step {d['step']}", d["answers"][0]) for d in samples["during"]]
    moments += [("after training", samples["after"][0])]
    assert [when for when, _ in moments] == ["before training", "step 2", "step 4", "after training"]
    rows = "\n".join(f"| {when} | {cell(item['answer'] or '(empty)')} |" for when, item in moments)
    assert f"**你是谁？**\n\n| when | answer |\n|---|---|\n{rows}\n" in text


def test_loss_png_draws_loss_grad_norm_and_learning_rate_per_step(two_runs):
    record = record_of(two_runs[0])
    assert_is_a_drawn_png(two_runs[0] / "loss.png")
    figure = loss_figure(record["log_history"], "run")
    assert [ax.get_ylabel() for ax in figure.axes] == ["training loss", "grad norm", "learning rate"]
    assert list(figure.axes[0].lines[0].get_xdata()) == [1, 2, 3, 4]
    assert list(figure.axes[0].lines[0].get_ydata()) == logged(record, "loss")
    assert list(figure.axes[1].lines[0].get_ydata()) == logged(record, "grad_norm")


def hand_written_record(log_history, samples=None, metrics=None):
    return {"backend": "cpu", "device": "cpu", "processes": 1, "template": "chatml", "versions": {"python": "3.11.7"},
            "notes": [], "data": [], "skipped": [], "metrics": metrics or {}, "log_history": log_history,
            "samples": samples or {"before": [], "during": [], "after": []}, "seconds": 1.0}


def test_report_of_a_run_without_grad_norm_or_eval_prompts(tmp_path):
    log = [{"loss": 2.5, "learning_rate": 1e-4, "epoch": 0.5, "step": 1},
           {"loss": 2.0, "learning_rate": 5e-5, "epoch": 1.0, "step": 2},
           {"train_runtime": 3.0, "train_loss": 2.25, "epoch": 1.0, "step": 2}]
    record = {**hand_written_record(log, metrics={"train_loss": 2.25, "train_runtime": 3.0}), "peak_memory_gib": 1.25}
    written = write_report(tmp_path, record)
    assert written == [tmp_path / "loss.png", tmp_path / "report.md"]
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| first loss | 2.5000 (step 1) |" in text and "| last loss | 2.0000 (step 2) |" in text
    assert "| mean loss (train_loss) | 2.2500 |" in text and "| peak device memory | 1.25 GiB" in text
    assert "No `eval_prompts` in the recipe" in text
    assert [ax.get_ylabel() for ax in loss_figure(log, "run").axes] == ["training loss", "learning rate"]
    assert_is_a_drawn_png(tmp_path / "loss.png")


def test_report_of_a_single_logged_step(tmp_path):
    log = [{"loss": 3.0, "grad_norm": 1.5, "learning_rate": 1e-4, "epoch": 1.0, "step": 1},
           {"train_runtime": 0.5, "train_loss": 3.0, "epoch": 1.0, "step": 1}]
    answers = [{"prompt": "Who | are you?", "answer": "a <|im_end|>\nline"}]
    write_report(tmp_path, hand_written_record(log, samples={"before": answers, "after": answers}))
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| logged steps | 1 (steps 1 to 1) |" in text and "| lowest loss | 3.0000 (step 1) |" in text
    assert "**Who \\| are you?**" in text and "| before training | a &lt;\\|im_end\\|><br>line |" in text
    assert_is_a_drawn_png(tmp_path / "loss.png")


def test_report_of_a_run_that_logged_no_step_and_lost_its_recipe(tmp_path):
    write_report(tmp_path, {"backend": "cpu", "log_history": [{"train_runtime": 0.1, "step": 0}]})
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| logged steps | none: no loss was logged" in text
    assert [ax.texts[0].get_text() for ax in loss_figure([], "run").axes] == ["no training step was logged"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_SIGNATURE


# --- portaft compare ---------------------------------------------------------------------------

def test_compare_prints_the_settings_that_differ_and_each_runs_losses(two_runs, tmp_path, capsys):
    out = tmp_path / "charts" / "lr.png"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in printed.splitlines()[1:]}
    assert rows["train.learning_rate"] == ["0.01", "0.002"]
    assert not [key for key in rows if key.startswith(("lora.", "model.", "data.", "train."))
                and key != "train.learning_rate"]  # equal settings (and output_dir) are not listed
    records = [record_of(f) for f in two_runs]
    assert rows["final loss"] == [f"{logged(r, 'loss')[-1]:.4f}" for r in records]
    assert rows["lowest loss"] == [f"{min(logged(r, 'loss')):.4f}" for r in records]
    assert rows["training time (s)"] == [f"{r['metrics']['train_runtime']:.1f}" for r in records]
    assert printed.splitlines()[0].split() == ["fast", "slow"]
    assert f"saved in {out.resolve()}" in printed
    assert_is_a_drawn_png(out)


def test_compare_legend_names_each_run_with_its_differing_settings(two_runs):
    runs = compare.load_runs(two_runs)
    figure = compare.loss_chart(runs, compare.differing_settings(runs))
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["fast (lr=0.01)", "slow (lr=0.002)"]
    assert [list(line.get_ydata()) for line in figure.axes[0].lines] == [logged(record_of(f), "loss") for f in two_runs]


def test_compare_writes_compare_png_in_the_current_folder_by_default(two_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *map(str, two_runs)]) == 0
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_SIGNATURE
    assert str((tmp_path / "compare.png").resolve()) in capsys.readouterr().out


def test_an_unset_train_key_compares_as_transformers_default():
    def run(name, train):
        recipe = {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}, "train": {"output_dir": name, **train}}
        return compare.FinishedRun(Path(name), name, {}, compare.flatten(recipe))

    from transformers import TrainingArguments

    explicit = run("a", {"learning_rate": TrainingArguments.learning_rate, "num_train_epochs": 5})
    differing = compare.differing_settings([explicit, run("b", {})])
    assert differing == {"train.num_train_epochs": ["5", f"{TrainingArguments.num_train_epochs:g} (default)"]}
    assert compare.differing_settings([run("c", {"num_train_epochs": 3}), run("d", {})]) == {}


def test_flatten_writes_the_paths_overrides_use():
    recipe = {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}, "data": [{"path": "a.jsonl", "weight": None}]}
    assert compare.flatten(recipe) == {"lora.r": 8, "lora.target_modules": ["q_proj", "v_proj"],
                                       "data.0.path": "a.jsonl", "data.0.weight": None}


def test_compare_needs_two_runs(two_runs, capsys):
    assert main(["compare", str(two_runs[0])]) == 2
    err = capsys.readouterr().err
    assert "compare needs at least two run folders" in err and "Traceback" not in err


def test_compare_refuses_a_folder_that_is_not_a_finished_run(two_runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoint-2").mkdir(parents=True)
    assert main(["compare", str(two_runs[0]), str(unfinished)]) == 2
    err = capsys.readouterr().err
    assert f"{unfinished} is not a finished portaft run: it has no portaft_run.json" in err
    assert "Traceback" not in err
    assert main(["compare", str(two_runs[0]), str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: no such folder" in capsys.readouterr().err


def test_compare_refuses_a_chart_name_it_cannot_write(two_runs, tmp_path, capsys):
    assert main(["compare", *map(str, two_runs), "--out", str(tmp_path / "chart.txt")]) == 2
    assert "give a file name ending in .png" in capsys.readouterr().err
    assert not (tmp_path / "chart.txt").exists()


def test_a_run_leaves_its_report_and_loss_chart(recipe_dict):
    lines = []
    result = portaft.run({**recipe_dict, "eval_prompts": ["你是谁？"]}, backend="cpu", echo=lines.append)
    text = (result.output_dir / "report.md").read_text(encoding="utf-8")
    assert f"| last loss | {result.log_history[-2]['loss']:.4f} (step 4) |" in text
    assert (result.output_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert any(line.startswith("portaft: report in ") for line in lines)


def test_a_failing_report_warns_and_keeps_the_finished_run(recipe_dict, monkeypatch):
    def broken(output_dir, record):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(portaft.runner.report, "write_report", broken)
    lines = []
    result = portaft.run(recipe_dict, backend="cpu", echo=lines.append)
    assert (result.output_dir / "portaft_run.json").is_file()
    assert (result.output_dir / "adapter_model.safetensors").is_file()
    assert any("warning: no report written (RuntimeError: no fonts)" in line for line in lines)
    assert lines[-1].startswith("portaft: adapter saved in")
