"""QLoRA's memory against bf16 LoRA on the same model, through `portaft run`.

    python bench/qlora_memory.py [--shape deepseek-llm-7b] [--steps 10] [--out bench/results]

Builds a randomly initialised model of a real shape (bench/models.py), writes 2,000
synthetic multi-turn chat samples, and runs the same recipe twice, each in its own
process: once as it is (LoRA r=16 on all linear layers, bf16, gradient checkpointing)
and once with `quantization: {bits: 4}` added (NF4, double quantization, bf16 compute).
Peak allocated memory and throughput come from each run's portaft_run.json. Needs a
CUDA GPU and bitsandbytes (`pip install 'portaft[qlora]'`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from models import build_model  # noqa: E402
from preprocess import synthetic_conversations  # noqa: E402

VARIANTS = {"lora-bf16": {}, "qlora-nf4": {"quantization": {"bits": 4, "type": "nf4", "double_quant": True,
                                                              "compute_dtype": "bf16"}}}


def recipe(model: Path, data: Path, output: Path, steps: int) -> dict:
    return {
        "backend": "cuda",
        "model": {"name_or_path": str(model)},
        "data": [{"path": str(data)}],
        "template": "deepseek",
        "max_length": 1024,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"output_dir": str(output), "max_steps": steps, "per_device_train_batch_size": 4,
                  "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "bf16": True, "gradient_checkpointing": True,
                  "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="deepseek-llm-7b")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--work", default=tempfile.gettempdir() + "/portaft-bench")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "models" / args.shape, args.shape)
    data = work / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_conversations(2000)), encoding="utf-8")
    results = {}
    for name, extra in VARIANTS.items():
        run_dir = work / "runs" / name
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**recipe(model, data, run_dir, args.steps), **extra,
                                        "resume": False, "overwrite": True}))
        subprocess.run([sys.executable, "-m", "portaft", "run", str(path)], check=True, cwd=work)
        record = json.loads((run_dir / "portaft_run.json").read_text(encoding="utf-8"))
        losses = [e["loss"] for e in record["log_history"] if "loss" in e]
        results[name] = {"peak_memory_gib": record["peak_memory_gib"],
                         "samples_per_second": record["metrics"].get("train_samples_per_second"),
                         "first_losses": losses[:3], "last_loss": losses[-1]}
    write_results(args, results)


def write_results(args: argparse.Namespace, results: dict) -> None:
    import torch
    import transformers

    import portaft.runner.outputs

    record = {"benchmark": "qlora_memory", "shape": args.shape, "steps": args.steps,
              "date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
              "versions": portaft.runner.outputs.library_versions() | {"transformers": transformers.__version__},
              "results": results}
    out = Path(args.out)
    (out / "qlora_memory.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    write_markdown(record, out)


def write_markdown(record: dict, out: Path) -> None:
    results = record["results"]
    lora, qlora = results["lora-bf16"], results["qlora-nf4"]
    lines = [f"# QLoRA vs bf16 LoRA, {record['shape']} shape, {record['gpu']}, {record['date']}", "",
             "Same recipe (LoRA r=16 all-linear, batch 4, max_length 1024, gradient checkpointing, "
             f"{record['steps']} steps); `quantization: {{bits: 4}}` added for QLoRA. Written by "
             "`python bench/qlora_memory.py`.", "",
             "| run | peak allocated (GiB) | loss, first steps | last loss |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['peak_memory_gib']} | "
                     f"{', '.join(f'{x:.3f}' for x in r['first_losses'])} | {r['last_loss']:.3f} |")
    lines += ["", f"QLoRA peak memory: {qlora['peak_memory_gib'] / lora['peak_memory_gib']:.0%} of bf16 LoRA's.",
              "", "samples/s is kept in the JSON but is no speed figure: 10 steps, warm-up included, the "
              "runs in sequence (bench/ issue 6's benchmark measures speed).",
              "", "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items())]
    (out / "qlora_memory.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"]:  # rewrite the .md from a results JSON
        write_markdown(json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")), Path(sys.argv[2]).parent)
    else:
        main()
