"""Unsloth on the seed recipe's samples: the path `unsloth` of bench/seed_recipe.py (issue 28's
comparison, same GPU, same run). Unsloth 2026.10.9 with unsloth_zoo 2026.10.9 and trl 1.15.0.

The same model folder and the same conversations as the other paths (seed_recipe.py's XTuner
JSONL), and the same math: bf16 LoRA r 64, alpha and dropout as seed_recipe.LORA, on all linear
layers (q, k, v, o, gate, up, down), micro-batch 2 x 8 accumulation, lr 1e-4, 1 epoch,
max_length 1024, the Trainer's default optimizer (AdamW) and schedule (linear, no warm-up, no
weight decay), seed 42, loss on the assistant replies only. Unsloth's runtime is as its notebooks
set it up: `FastLanguageModel.from_pretrained` (its patched Llama, SDPA where xformers and
flash-attn are absent), `FastLanguageModel.get_peft_model(use_gradient_checkpointing="unsloth")`
(its offloaded checkpointing), trl's `SFTTrainer` + `SFTConfig` on a `text` column (which Unsloth
patches at import), then `train_on_responses_only` with the deepseek template's markers.

- load_in_4bit is off (`load_in_4bit=False, load_in_16bit=True`): the other paths train a LoRA
  on 16-bit weights, and QLoRA (4-bit NF4 base weights) computes something else, with other
  losses and less memory; it also needs bitsandbytes, which is not carried.
- The notebooks' recipe knobs (lr 2e-4, warmup 5, weight decay 0.01, `adamw_8bit`) are the seed's
  instead: those change what is computed, not how fast. `adamw_8bit` needs bitsandbytes too.
- The text is what the other paths train: each conversation rendered with portaft's `deepseek`
  template (the model's own: `<bos>{system}\\n\\nUser: {q}\\n\\nAssistant: {a}<eos>User: ...`), and
  `train_on_responses_only(instruction_part="User: ", response_part="Assistant:")` masks all but
  " {a}<eos>" of each turn, as portaft and plain HF do (LLaMA-Factory's template drops the space).
- Samples over 1024 tokens: SFTTrainer cuts them at 1024 (keep_start) where portaft drops a turn
  cut inside its question: on the 400 conversations 118,299 tokens against portaft's 118,214.

Each run is a process of its own (`--worker` below, with cwd the work folder: Unsloth writes its
compiled trainer to unsloth_compiled_cache/ and buffers to _unsloth_temporary_saved_buffers/
there), started with the hub switched off: HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and
HF_DATASETS_OFFLINE (Unsloth's `has_internet()` then says no without a socket, and its
`get_statistics()`, which downloads a README from the hub at every from_pretrained, returns), and
UNSLOTH_DISABLE_STATISTICS. Recorded as the other paths: wall_s (launch to saved adapter, the
process's life), train_s (train_runtime), tokens (the sum of every sample's input_ids that
SFTTrainer trains), trained_tokens_per_s (over train_runtime), peak_gib (max_memory_allocated,
read in the worker), the first 10 losses, steps, and the split.

Without a GPU, Unsloth 2026.10.9 imports its CPU backend instead (stock transformers + peft + trl;
none of its kernels): a smoke run of this path's data, masking and settings, not of Unsloth. The
record's `unsloth_backend` says which ran; `--shape tiny` on the CPU trains fp32.

On the GPU machine (no registry there), with .whl and .whl-us carried; Unsloth's packages go to
a folder of their own, which only its worker puts first on its path (SEED_UNSLOTH_SITE): its trl
1.15 and datasets 4.8 must not replace LLaMA-Factory's trl 0.24 or portaft's datasets 5.2:

    python -m pip install -q --no-deps .whl/*.whl                    # datasets, pydantic, pluggy...
    python -m pip install -q --no-deps --no-build-isolation --target /tmp/site . && export PYTHONPATH=/tmp/site
    python -m pip install -q --no-deps --no-index --target /tmp/site-us .whl-us/*.whl
    export SEED_UNSLOTH_SITE=/tmp/site-us PYTHONUNBUFFERED=1
    R=$PWD; cd /tmp && python $R/bench/seed_recipe.py --work /tmp/w --conversations 400 --paths unsloth --out $OUT/us

.whl-us (35 MB) holds what `pip install unsloth==2026.10.9` adds to the GPU image for this run:
unsloth and unsloth_zoo 2026.10.9, trl 1.15.0 (the newest it allows), datasets 4.8.5 (it pins
< 5), torchao 0.18.0, cut_cross_entropy 25.1.1 (off on torch >= 2.8 in unsloth_zoo) and msgspec
0.23.0. Its pins admit the image's torch 2.11, transformers 5.17.0 (its ceiling), peft 0.21 and
accelerate, and its source checks no upper bound at import (read here, not run on a GPU). Left
out, each optional in Unsloth's code: bitsandbytes (4-bit and 8-bit optimizers only: Unsloth
prints that 4-bit is unavailable and, run as root, calls `ldconfig` once looking for CUDA),
xformers (Unsloth uses SDPA without it), diffusers, tyro, hf_transfer, and the packages of its
Studio web UI and CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from seed_worker import run_timed  # bench/seed_worker.py

PATHS = ("unsloth",)
VERSION = "2026.10.9"
INSTRUCTION_PART, RESPONSE_PART = "User: ", "Assistant:"  # the deepseek template's markers
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "UNSLOTH_DISABLE_STATISTICS": "1"}
SITE = "SEED_UNSLOTH_SITE"  # a folder of Unsloth's own packages, first on the worker's path only
NO_UNSLOTH = ("unsloth is not installed: neither in this Python nor in $SEED_UNSLOTH_SITE "
              "(bench/seed_unsloth.py says how to install its carried wheels)")


def messages_of(row: dict) -> list[dict]:
    """One XTuner `conversation` record (system on the first turn) as chat messages."""
    system = row["conversation"][0].get("system")
    messages = [{"role": "system", "content": system}] if system else []
    for turn in row["conversation"]:
        messages += [{"role": "user", "content": turn["input"]}, {"role": "assistant", "content": turn["output"]}]
    return messages


def render(tokenizer, messages: list[dict]) -> str:
    """The text portaft trains for `template: deepseek` (the model's own chat template)."""
    from portaft.data.chat_templates import DEEPSEEK

    return tokenizer.apply_chat_template(messages, chat_template=DEEPSEEK, tokenize=False)


def write_dataset(data: Path, model: Path, folder: Path) -> Path:
    """The JSONL the other paths read, as the `text` rows SFTTrainer reads: FOLDER/NAME.jsonl."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{data.stem}.jsonl"
    with data.open(encoding="utf-8") as file, target.open("w", encoding="utf-8") as out:
        for line in file:
            if line.strip():
                text = render(tokenizer, messages_of(json.loads(line)))
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return target


def settings(model: Path, text_file: Path, output_dir: Path, train: dict, lora: dict, max_length: int,
             cuda: bool) -> dict:
    """The seed's settings in Unsloth's and trl's names: from_pretrained, get_peft_model, SFTConfig."""
    if lora["target_modules"] != "all-linear":
        raise ValueError(f"LoRA targets {lora['target_modules']!r}: only all-linear maps to {ALL_LINEAR}")
    checkpointing = "unsloth" if train.get("gradient_checkpointing", True) else False
    return {
        "from_pretrained": {"model_name": str(model), "max_seq_length": max_length,
                            "dtype": "bfloat16" if cuda else "float32", "load_in_4bit": False,
                            "load_in_16bit": True, "use_gradient_checkpointing": checkpointing},
        "get_peft_model": {"r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
                           "target_modules": ALL_LINEAR, "bias": "none", "use_gradient_checkpointing": checkpointing,
                           "random_state": train["seed"], "use_rslora": False, "loftq_config": None},
        "sft_config": {"output_dir": str(output_dir), "dataset_text_field": "text", "max_length": max_length,
                       "packing": False, "bf16": cuda, "fp16": False, "use_cpu": not cuda,
                       **{key: train[key] for key in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                      "learning_rate", "num_train_epochs", "logging_steps",
                                                      "save_strategy", "report_to", "seed")}},
        "responses_only": {"instruction_part": INSTRUCTION_PART, "response_part": RESPONSE_PART},
        "data": str(text_file),
    }


def split_of(chosen: dict) -> dict:
    return {"micro_batch": chosen["sft_config"]["per_device_train_batch_size"],
            "accumulation": chosen["sft_config"]["gradient_accumulation_steps"],
            "checkpointing": chosen["get_peft_model"]["use_gradient_checkpointing"]}


def read_results(record: dict) -> dict:
    """train_s, tokens, tokens/s, peak and the losses from what the worker wrote."""
    losses = [entry["loss"] for entry in record["log_history"] if "loss" in entry]
    # trl's own count of the tokens it fed the model (attention_mask): where it differs from `tokens`,
    # something after the dataset cut or padded them
    fed = [entry["num_tokens"] for entry in record["log_history"] if "num_tokens" in entry]
    runtime = record["metrics"]["train_runtime"]
    return {"train_s": round(runtime, 1), "tokens": record["tokens"], "trl_num_tokens": fed[-1] if fed else None,
            "trained_tokens_per_s": round(record["tokens"] / runtime, 1), "peak_gib": record["peak_memory_gib"],
            "losses": losses[:10], "steps": len(losses), "last_loss": losses[-1] if losses else None,
            "dropped_samples": record["dropped_samples"], "unsloth_backend": record["backend"],
            "versions": record["versions"]}


def own_site() -> list[str]:
    """Unsloth's folder: its trl 1.15 and datasets 4.x must not replace LLaMA-Factory's trl 0.24 or
    portaft's datasets 5 in the process that runs the other paths."""
    return [os.environ[SITE]] if os.environ.get(SITE) else []


def installed() -> bool:
    import importlib.util

    return any(Path(folder, "unsloth", "__init__.py").is_file() for folder in own_site()) or \
        importlib.util.find_spec("unsloth") is not None


def worker_env(work: Path) -> dict:
    """The worker's environment: the hub off, Unsloth's statistics off, its compiled trainer
    written under `work`, and its own packages first on the path."""
    env = {**os.environ, **OFFLINE, "UNSLOTH_COMPILE_LOCATION": str(work / "unsloth_compiled_cache")}
    env["PYTHONPATH"] = os.pathsep.join([*own_site(), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(work: Path, path: str, model: Path, data: Path, train: dict, lora: dict, max_length: int, cuda: bool) -> dict:
    """One path in a process of its own: wall clock from launch to saved adapter (the whole process)."""
    if path not in PATHS:
        raise ValueError(f"unknown Unsloth path {path!r}: one of {', '.join(PATHS)}")
    if not installed():
        return {"skipped": NO_UNSLOTH}
    text_file = write_dataset(data, model, work / "unsloth-data")
    output_dir = work / "runs" / f"{path}-{data.stem}"
    shutil.rmtree(output_dir, ignore_errors=True)
    chosen = settings(model, text_file, output_dir, train, lora, max_length, cuda)
    settings_file = work / f"{path}-{data.stem}.json"
    settings_file.write_text(json.dumps(chosen, indent=2, ensure_ascii=False))
    record_file = work / f"{path}-{data.stem}-record.json"
    record_file.unlink(missing_ok=True)
    env = worker_env(work)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(settings_file), str(record_file)]
    finished = run_timed(command, env, cwd=str(work))
    output = finished.output
    (work / f"{path}-{data.stem}.log").write_text(output)
    base = {"command": f"python bench/seed_unsloth.py --worker {settings_file.name} (Unsloth {VERSION})",
            "config": chosen, "split": split_of(chosen), "wall_s": round(finished.wall_s, 1)}
    if finished.returncode != 0 or not record_file.is_file() or not (output_dir / "adapter_config.json").is_file():
        return {**base, "error": output[-3000:]}
    return {**base, **read_results(json.loads(record_file.read_text())),
            "launch_to_first_step_s": finished.first_step_s}


def worker(settings_file: str, record_file: str) -> None:
    """Unsloth as its notebooks run it, on the settings `run` wrote; then the record."""
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]  # bench/models.py etc. must not shadow anything
    chosen = json.loads(Path(settings_file).read_text())
    # isort: off
    import unsloth  # first, before transformers, trl and peft: it patches them at import
    from unsloth import FastLanguageModel
    from unsloth.chat_templates import train_on_responses_only

    import torch
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer
    # isort: on

    loading = {**chosen["from_pretrained"], "dtype": getattr(torch, chosen["from_pretrained"]["dtype"])}
    model, tokenizer = FastLanguageModel.from_pretrained(**loading)
    model = FastLanguageModel.get_peft_model(model, **chosen["get_peft_model"])
    dataset = load_dataset("json", data_files=chosen["data"], split="train")
    args = SFTConfig(**chosen["sft_config"])
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args)
    trainer = train_on_responses_only(trainer, **chosen["responses_only"])
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    output = trainer.train()
    trainer.save_model(chosen["sft_config"]["output_dir"])
    cuda = torch.cuda.is_available()
    versions = {name: getattr(module, "__version__", None) for name, module in
                (("unsloth", unsloth), ("torch", torch), ("trl", sys.modules["trl"]),
                 ("transformers", sys.modules["transformers"]), ("peft", sys.modules["peft"]))}
    record = {"log_history": trainer.state.log_history, "metrics": output.metrics, "tokens": tokens,
              "samples": len(trainer.train_dataset),  # it drops a sample whose labels are all masked
              "dropped_samples": len(dataset) - len(trainer.train_dataset),
              "backend": "cpu" if getattr(unsloth, "_IS_CPU_BACKEND", False) else getattr(unsloth, "DEVICE_TYPE", None),
              "versions": versions,
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    Path(record_file).write_text(json.dumps(record))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("used by bench/seed_recipe.py: --paths unsloth")
