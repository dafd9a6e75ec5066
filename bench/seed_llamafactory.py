"""LLaMA-Factory on the seed recipe's samples: the paths `llamafactory-defaults` and
`llamafactory-best` of bench/seed_recipe.py (issue 28's comparison, same GPU, same run).

- llamafactory-defaults: LLaMA-Factory's defaults with the seed's settings (micro-batch 2 x 8
  accumulation, gradient checkpointing, lr 1e-4, 1 epoch, cutoff_len 1024, LoRA r 64 on all
  linear layers, dropout as the other paths), bf16 on a GPU;
- llamafactory-best: micro-batch 16 x 1, `enable_liger_kernel: true`, no gradient checkpointing;
- llamafactory-best-8x2: the same at micro-batch 8 x 2 (16 x 1 runs out of memory on an 80 GB H100).

The samples are the same conversations the other paths train (seed_recipe.py's XTuner JSONL),
written as a ShareGPT file with its dataset_info.json entry, template deepseek. Each path runs
`llamafactory-cli train config.yaml` in a process of its own (through `--worker` below, which
calls the same entry point and then reads the CUDA peak, which LLaMA-Factory does not record),
with DISABLE_VERSION_CHECK=1 (0.9.5 pins transformers <= 5.6, peft <= 0.18.1). LLaMA-Factory
imports torchaudio at start-up: where it is not installed an empty stand-in module is put on
PYTHONPATH. On the CPU (a smoke run) precision is fp32 and the Liger kernel is off (it needs Triton).

Tokens per second: LLaMA-Factory's own count of the tokens it trained (its
include_effective_tokens_per_second: the sum of every sample's input_ids, as portaft's data
report counts them) over the Trainer's train_runtime, as the other paths compute it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from seed_worker import run_timed  # bench/seed_worker.py

PATHS = ("llamafactory-defaults", "llamafactory-best", "llamafactory-best-8x2")
BEST = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "disable_gradient_checkpointing": True}
LIGER_APPLIED = "Liger kernel has been applied to the model."


def sharegpt_rows(xtuner_rows: list[dict]) -> list[dict]:
    """XTuner `conversation` records (system on the first turn) as LLaMA-Factory's ShareGPT rows."""
    rows = []
    for row in xtuner_rows:
        messages = []
        for turn in row["conversation"]:
            messages += [{"from": "human", "value": turn["input"]}, {"from": "gpt", "value": turn["output"]}]
        rows.append({"conversations": messages, "system": row["conversation"][0].get("system", "")})
    return rows


def write_dataset(data: Path, folder: Path) -> str:
    """The JSONL the other paths read, as FOLDER/NAME.json + FOLDER/dataset_info.json; returns NAME."""
    name = data.stem
    folder.mkdir(parents=True, exist_ok=True)
    with data.open(encoding="utf-8") as file:
        rows = sharegpt_rows([json.loads(line) for line in file if line.strip()])
    (folder / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {name: {"file_name": f"{name}.json", "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "system": "system"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return name


def config(path: str, model: Path, dataset_dir: Path, dataset: str, output_dir: Path, train: dict, lora: dict,
           max_length: int, cuda: bool) -> dict:
    """The YAML `llamafactory-cli train` reads: the seed's settings in LLaMA-Factory's names."""
    if lora["target_modules"] != "all-linear":
        raise ValueError(f"LoRA targets {lora['target_modules']!r}: only all-linear maps to lora_target all")
    settings = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"], "lora_target": "all",
        "dataset": dataset, "dataset_dir": str(dataset_dir), "template": "deepseek", "cutoff_len": max_length,
        "overwrite_cache": True, "output_dir": str(output_dir), "bf16": cuda, "plot_loss": False,
        "include_effective_tokens_per_second": True,
        **{key: train[key] for key in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                       "learning_rate", "num_train_epochs", "logging_steps", "save_strategy",
                                       "report_to", "seed")},
    }
    if not train.get("gradient_checkpointing", True):
        settings["disable_gradient_checkpointing"] = True
    if path == "llamafactory-best":
        settings.update(BEST, enable_liger_kernel=cuda)
    elif path == "llamafactory-best-8x2":  # its best where 16 x 1 does not fit the card (an 80 GB H100)
        settings.update(BEST, per_device_train_batch_size=8, gradient_accumulation_steps=2, enable_liger_kernel=cuda)
    elif path != "llamafactory-defaults":
        raise ValueError(f"unknown LLaMA-Factory path {path!r}: one of {', '.join(PATHS)}")
    return settings


def split_of(settings: dict) -> dict:
    return {"micro_batch": settings["per_device_train_batch_size"],
            "accumulation": settings["gradient_accumulation_steps"],
            "checkpointing": not settings.get("disable_gradient_checkpointing", False),
            "liger_kernel": bool(settings.get("enable_liger_kernel", False))}


def read_results(output_dir: Path) -> dict:
    """train_s, tokens, tokens/s and the losses from what LLaMA-Factory leaves in output_dir
    (trainer_state.json's log_history, train_results.json's metrics)."""
    history = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    metrics = json.loads((output_dir / "train_results.json").read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in history if "loss" in entry]
    runtime = metrics["train_runtime"]
    # LLaMA-Factory reports sum(len(input_ids)) x epoch / runtime: the same count back as tokens
    tokens = round(metrics["effective_tokens_per_sec"] * runtime / metrics["epoch"])
    return {"train_s": round(runtime, 1), "tokens": tokens, "trained_tokens_per_s": round(tokens / runtime, 1),
            "losses": losses[:10], "steps": len(losses), "last_loss": losses[-1] if losses else None}


def stand_in_torchaudio(work: Path) -> list[str]:
    """LLaMA-Factory imports torchaudio at start-up and does not use it for text SFT."""
    if importlib.util.find_spec("torchaudio") is not None:
        return []
    folder = work / "stand-ins"
    (folder / "torchaudio").mkdir(parents=True, exist_ok=True)
    (folder / "torchaudio" / "__init__.py").write_text('"""An empty stand-in: not installed here."""\n')
    return [str(folder)]


def run(work: Path, path: str, model: Path, data: Path, train: dict, lora: dict, max_length: int, cuda: bool) -> dict:
    """One path in a process of its own: wall clock from launch to saved adapter (the whole process)."""
    dataset_dir = work / "llamafactory-data"
    dataset = write_dataset(data, dataset_dir)
    output_dir = work / "runs" / f"{path}-{dataset}"
    shutil.rmtree(output_dir, ignore_errors=True)  # transformers 5 has no overwrite_output_dir
    settings = config(path, model, dataset_dir, dataset, output_dir, train, lora, max_length, cuda)
    config_file = work / f"{path}-{dataset}.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    peak_file = work / f"{path}-{dataset}-peak.json"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1"}
    env["PYTHONPATH"] = os.pathsep.join([*stand_in_torchaudio(work), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, __file__, "--worker", str(config_file), str(peak_file)]
    finished = run_timed(command, env)
    output = finished.output
    (work / f"{path}-{dataset}.log").write_text(output)
    split = split_of(settings)
    # it skips the kernel with only a warning for a model type it does not know: say whether it ran
    split["liger_kernel"] = split["liger_kernel"] and LIGER_APPLIED in output
    base = {"command": f"DISABLE_VERSION_CHECK=1 llamafactory-cli train {config_file.name}", "config": settings,
            "split": split, "wall_s": round(finished.wall_s, 1)}
    if finished.returncode != 0 or not (output_dir / "adapter_config.json").is_file():
        return {**base, "error": output[-3000:]}
    peak = json.loads(peak_file.read_text())["peak_memory_gib"]
    return {**base, **read_results(output_dir), "peak_gib": peak, "launch_to_first_step_s": finished.first_step_s}


def worker(config_file: str, peak_file: str) -> None:
    """`llamafactory-cli train CONFIG` (one device: it trains in this process), then the CUDA peak."""
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]  # bench/models.py etc. must not shadow anything
    import torch
    from llamafactory.cli import main

    sys.argv = ["llamafactory-cli", "train", config_file]
    main()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    Path(peak_file).write_text(json.dumps({"peak_memory_gib": peak}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("used by bench/seed_recipe.py: --paths llamafactory-defaults llamafactory-best")
