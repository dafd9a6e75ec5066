"""The seed tutorial's recipe as a user runs it: portaft (plan auto, plan as_written) against
plain transformers + peft, end to end, one process per path (issue 28).

    python bench/seed_recipe.py --conversations 400 --paths auto as_written hf --out bench/results/seed-recipe-DATE
    python bench/seed_recipe.py --shape tiny --conversations 24 --out /tmp/seed-smoke       # CPU smoke run
    python bench/seed_recipe.py --paths llamafactory-defaults llamafactory-best ...         # LLaMA-Factory installed

Model: a random DeepSeek-LLM-7B-shaped model (bench/models.py: 30 layers, hidden 4096, FFN
11008, the DeepSeek tokenizer's 129,280 ids), bf16. Data: EmoLLM-style multi-turn chats in
XTuner's `conversation` format (bench/throughput_settings.sft_conversations: system prompt in
30%, 1-4 turns, Chinese, lognormal lengths, mean about 290 tokens). The recipe is the seed
tutorial's: per_device_train_batch_size 2, gradient_accumulation_steps 8, gradient
checkpointing, lr 1e-4, 1 epoch, max_length 1024, LoRA r 64 on all linear layers (dropout 0,
so the paths' losses compare). Paths:

- auto: `portaft run recipe.yaml` (plan: auto, the default);
- as_written: `portaft run recipe.yaml plan=as_written`;
- extra portaft paths: `--variant NAME=override,override` (e.g. to turn a speed-up off);
- hf: a plain Trainer + peft script with the same settings (DataCollatorForSeq2Seq, SDPA)
  on the same token ids (portaft's data step);
- llamafactory-defaults, llamafactory-best: LLaMA-Factory 0.9.5 on the same conversations
  (bench/seed_llamafactory.py: its defaults with the seed's settings; micro-batch 16, Liger
  kernel, no checkpointing);
- unsloth: Unsloth 2026.10.9 on the same conversations at its recommended runtime settings
  (bench/seed_unsloth.py: bf16 LoRA, its checkpointing, trl's SFTTrainer, replies only).

Measured: wall clock from launch to saved adapter (the process's whole life), the Trainer's
train_runtime, useful (non-pad) tokens trained per second of train_runtime (compile
included), the peak GiB, the first 10 losses, and portaft's plan record. Results:
OUT/seed-recipe.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED_TRAIN = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "gradient_checkpointing": True,
              "learning_rate": 1e-4, "num_train_epochs": 1, "logging_steps": 1, "save_strategy": "no",
              "report_to": "none", "seed": 42}
MAX_LENGTH = 1024
LORA = {"r": 64, "alpha": 128, "dropout": 0.0, "target_modules": "all-linear"}


def xtuner_rows(count: int, scale: int) -> list[dict]:
    """EmoLLM's files are XTuner `conversation` records: the synthetic chats in that shape."""
    sys.path.insert(0, str(HERE))
    from throughput_settings import sft_conversations

    rows = []
    for chat in sft_conversations(count, scale=scale):
        messages = chat["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = [m for m in messages if m["role"] != "system"]
        conversation = []
        for index in range(0, len(turns), 2):
            turn = {"input": turns[index]["content"], "output": turns[index + 1]["content"]}
            if system is not None and index == 0:
                turn = {"system": system, **turn}
            conversation.append(turn)
        rows.append({"conversation": conversation})
    return rows


def prepare(work: Path, shape: str, count: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE))
    from models import build_model

    if shape == "tiny":
        from portaft.testing import build_tiny_model

        model = build_tiny_model(work / "models" / "tiny")
    else:
        model = build_model(work / "models" / shape, shape)
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # building it on the GPU left its blocks cached in this (parent) process
    data = work / f"emollm-style-{count}.jsonl"
    with data.open("w", encoding="utf-8") as file:
        for row in xtuner_rows(count, 8 if shape == "tiny" else 1):
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(model), data


def recipe(model: Path, data: Path, output_dir: Path, cuda: bool) -> dict:
    return {"model": {"name_or_path": str(model)}, "data": [{"path": str(data)}], "template": "deepseek",
            "max_length": MAX_LENGTH, "lora": LORA,
            "train": {**SEED_TRAIN, "output_dir": str(output_dir), "bf16": cuda}}


def run_portaft(work: Path, name: str, recipe_file: Path, overrides: list[str]) -> dict:
    """`portaft run` in a process of its own; an override `env:NAME=VALUE` sets its environment
    instead (e.g. env:PORTAFT_DEVICE_MEMORY_GIB=24, a smaller device)."""
    output_dir = work / "runs" / name
    env = dict(item[4:].split("=", 1) for item in overrides if item.startswith("env:"))
    overrides = [item for item in overrides if not item.startswith("env:")]
    command = [sys.executable, "-m", "portaft", "run", str(recipe_file), f"train.output_dir={output_dir}",
               "resume=false", "overwrite=true", *overrides]
    started = time.time()
    output, first_step, milestones = timed_lines(command, {**os.environ, **env}, started)
    wall = time.time() - started
    (work / f"{name}.log").write_text(output)
    if not (output_dir / "portaft_run.json").is_file():
        return {"command": " ".join(command[2:]), "error": output[-3000:], "wall_s": wall}
    record = json.loads((output_dir / "portaft_run.json").read_text())
    return {"command": "portaft " + " ".join(command[4:]), "env": env, "wall_s": round(wall, 1), **summary(record),
            "launch_to_first_step_s": first_step, "milestones_s": milestones}


# where the time before the first step goes: when the first line of each stage came
MILESTONES = {"imports and recipe": r"^portaft: backend ", "data read and tokenized": r"^portaft: data ",
              "model loaded, adapter added": r"^portaft: trainable parameters", "planned": r"^portaft: plan ",
              "first step": r"(^|\r)step 1/"}


def timed_lines(command: list[str], env: dict, started: float) -> tuple[str, float | None, dict]:
    """Run `command`, its output merged, each line stamped with the seconds since launch;
    also when its first step's log line ("step 1/...") and each of MILESTONES came."""
    import re

    lines, seen = [], {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        for line in child.stdout:
            at = round(time.time() - started, 1)
            lines.append(f"[{at:7.1f}s] {line}")
            for name, pattern in MILESTONES.items():
                if name not in seen and re.search(pattern, line):
                    seen[name] = at
    return "".join(lines), seen.get("first step"), seen


def summary(record: dict) -> dict:
    history = record["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    metrics = record["metrics"]
    tokens = sum(row.get("tokens", 0) for row in record.get("data", []))
    return {"train_s": round(metrics["train_runtime"], 1), "tokens": tokens,
            "trained_tokens_per_s": round(tokens / metrics["train_runtime"], 1),
            "peak_gib": record.get("peak_memory_gib"), "losses": losses[:10], "steps": len(losses),
            "last_loss": losses[-1] if losses else None, "plan": record.get("plan"),
            "notes": [n for n in record.get("notes", []) if n.startswith(("plan", "speed-up compiled"))]}


def hf_worker(model: str, data: str, out: str) -> None:
    """The tutorial's script: Trainer + peft, DataCollatorForSeq2Seq, the same settings."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    import portaft.data
    from portaft.compat import model_dtype_kwargs, trainer_kwargs
    from portaft.plugins import get_plugins

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model)
    portaft.data.prepare_tokenizer(tokenizer)
    plugins = get_plugins()
    read = plugins.read_recipe(recipe(Path(model), Path(data), Path(out), cuda))
    built = portaft.data.build(read, tokenizer, plugins)
    set_seed(42)
    base = AutoModelForCausalLM.from_pretrained(model, attn_implementation="sdpa",
                                                **model_dtype_kwargs(torch.bfloat16 if cuda else torch.float32))
    base.enable_input_require_grads()
    peft_model = get_peft_model(base, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=LORA["target_modules"], task_type=TaskType.CAUSAL_LM))
    args = TrainingArguments(**{**SEED_TRAIN, "output_dir": out, "bf16": cuda, "use_cpu": not cuda,
                                "remove_unused_columns": False})
    trainer = Trainer(model=peft_model, args=args, train_dataset=built.dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
                      **trainer_kwargs(Trainer, tokenizer))
    output = trainer.train()
    trainer.save_model(out)
    record = {"log_history": trainer.state.log_history, "metrics": output.metrics,
              "data": portaft.data.report_rows(built.reports),
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    Path(out, "hf_run.json").write_text(json.dumps(record))


def run_hf(work: Path, model: Path, data: Path) -> dict:
    out = work / "runs" / "hf"
    command = [sys.executable, __file__, "--hf-worker", str(model), str(data), str(out)]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    (work / "hf.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr)[-3000:], "wall_s": wall}
    return {"command": "python bench/seed_recipe.py --hf-worker ...", "wall_s": round(wall, 1),
            **summary(json.loads((out / "hf_run.json").read_text()))}


def table(record: dict) -> str:
    rows = ["| path | wall s | launch to step 1, s | train s | tokens/s | peak GiB | split | steps | loss 1, 2, 3 | "
            "last loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, path in record["paths"].items():
        if "error" in path:
            rows.append(f"| {name} | failed: {path['error'][-200:]!r} |  |  |  |  |  |  |  |  |")
            continue
        if "skipped" in path:
            rows.append(f"| {name} | not run: {path['skipped']} |  |  |  |  |  |  |  |  |")
            continue
        plan = path.get("plan") or path.get("split") or {}
        ckpt = plan.get("checkpointing")  # True, False, or how (Unsloth's "unsloth": offloaded to the host)
        checkpointing = "" if not ckpt else ", ckpt" if ckpt is True else f", ckpt ({ckpt})"
        split = (f"{plan['micro_batch']} x {plan['accumulation']}{checkpointing}"
                 f"{', Liger' if plan.get('liger_kernel') else ''}"
                 if plan else "2 x 8, ckpt")
        rows.append(f"| {name} | {path['wall_s']} | {path.get('launch_to_first_step_s')} | {path['train_s']} | "
                    f"{path['trained_tokens_per_s']:,.0f} | {path['peak_gib']} | {split} | {path['steps']} | "
                    f"{', '.join(f'{x:.4f}' for x in path['losses'][:3])} | {path['last_loss']:.4f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="deepseek-llm-7b")
    parser.add_argument("--conversations", type=int, nargs="+", default=[400])
    parser.add_argument("--paths", nargs="*", default=["auto", "as_written", "hf"])
    parser.add_argument("--variant", action="append", default=[], help="NAME=override,override (a portaft path)")
    parser.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/seed-recipe")
    parser.add_argument("--out", required=False)
    parser.add_argument("--hf-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        return hf_worker(*args.hf_worker)
    import seed_llamafactory
    import seed_unsloth
    import torch
    import yaml

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    record = {"shape": args.shape, "gpu": torch.cuda.get_device_name() if cuda else None, "runs": {}}
    variants = dict(v.split("=", 1) for v in args.variant)
    for count in args.conversations:
        model, data = prepare(work, args.shape, count)
        recipe_file = work / f"recipe-{count}.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe(model, data, work / "runs" / "unused", cuda), allow_unicode=True))
        paths = {}
        for name in [*args.paths, *variants]:
            if name == "hf":
                paths[name] = run_hf(work, model, data)
            elif name in seed_llamafactory.PATHS:
                paths[name] = seed_llamafactory.run(work, name, model, data, SEED_TRAIN, LORA, MAX_LENGTH, cuda)
            elif name in seed_unsloth.PATHS:
                paths[name] = seed_unsloth.run(work, name, model, data, SEED_TRAIN, LORA, MAX_LENGTH, cuda)
            elif name in variants:
                paths[name] = run_portaft(work, f"{name}-{count}", recipe_file, variants[name].split(","))
            else:
                paths[name] = run_portaft(work, f"{name}-{count}", recipe_file, [f"plan={name}"])
            print(name, count, json.dumps(paths[name])[:600], flush=True)
            record["runs"][str(count)] = {"recipe": yaml.safe_load(recipe_file.read_text()), "paths": paths}
            if args.out:  # after every path: a machine taken back mid-run keeps what ran
                write(args.out, record)


def write(out: str, record: dict) -> None:
    from result_files import write_results

    text = "".join(f"## {count} conversations\n\n{table(run)}\n" for count, run in record["runs"].items())
    write_results(out, "seed-recipe", record, text)


if __name__ == "__main__":
    main()
