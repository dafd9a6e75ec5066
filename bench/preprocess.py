"""Preprocessing speed: portaft's data step against a plain batched `datasets.map`.

    python bench/preprocess.py                    # 100k conversations, 3 rounds
    python bench/preprocess.py --records 2000 --rounds 1 --out /tmp/smoke   # CI smoke

Both paths start from the same JSONL file of synthetic multi-turn conversations
(OpenAI `messages` format, about 300 tokens each with the DeepSeek tokenizer) and
end with a tokenized dataset in memory:

- plain: `load_dataset("json")` + `map(batched=True)` that renders each
  conversation with `tokenizer.apply_chat_template(tokenize=False)` and tokenizes
  the batch with the fast tokenizer. No loss mask, no checks: the floor a
  tutorial script reaches.
- plain-2proc: the same with `num_proc=2`, for reference.
- portaft: `portaft.data.build(recipe)`: reading, format detection, checks on every
  record, rendering, loss masks of every assistant reply, truncation, reports.

Each measurement runs in a fresh process with an empty datasets cache, the two
paths alternate, and the median of the rounds is reported. Results go to
OUT/preprocess.json and OUT/preprocess.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import result_files  # bench/result_files.py

REPO = Path(__file__).resolve().parents[1]

PHRASES = [
    "最近工作压力很大", "晚上总是睡不着", "和家人的关系有些紧张", "我不知道该怎么办", "感觉自己什么都做不好",
    "这种情况持续了好几个月", "朋友们好像都不理解我", "我试过运动但是没有用", "每天早上醒来都很累",
    "听起来你承受了很多", "这种感受是可以理解的", "我们可以一起慢慢梳理", "你愿意多说一些吗",
    "可以先从小的改变开始", "给自己一些耐心", "试着把担心写下来", "如果需要也可以寻求专业帮助",
    "I feel anxious before every meeting", "Let's take it one step at a time", "that sounds really hard",
]


def synthetic_conversations(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def sentence(low: int, high: int) -> str:
        return "，".join(rng.choice(PHRASES) for _ in range(rng.randint(low, high))) + "。"

    rows = []
    for _ in range(count):
        messages = [{"role": "system", "content": "你是一位温和、专业的心理咨询师。"}]
        for _ in range(rng.randint(2, 4)):
            messages.append({"role": "user", "content": sentence(2, 6)})
            messages.append({"role": "assistant", "content": sentence(5, 18)})
        rows.append({"messages": messages})
    return rows


def run_plain(data: str, model: str, processes: int | None = None) -> dict:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from portaft.data.chat_templates import DEEPSEEK

    tokenizer = AutoTokenizer.from_pretrained(model)
    started = time.perf_counter()
    rows = load_dataset("json", data_files=data, split="train")

    def tokenize(batch):
        texts = [tokenizer.apply_chat_template(m, chat_template=DEEPSEEK, tokenize=False) for m in batch["messages"]]
        return tokenizer(texts, add_special_tokens=False)

    encoded = rows.map(tokenize, batched=True, remove_columns=rows.column_names, num_proc=processes)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "records": len(encoded), "tokens": sum(len(ids) for ids in encoded["input_ids"])}


def run_portaft(data: str, model: str) -> dict:
    import portaft.data
    from portaft import load_recipe
    from portaft.plugins import get_plugins

    recipe = load_recipe({"model": {"name_or_path": model}, "data": [{"path": data}], "template": "deepseek",
                          "max_length": 4096, "train": {"output_dir": "/tmp/unused"}})
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(model)
    portaft.data.prepare_tokenizer(tokenizer)
    started = time.perf_counter()
    built = portaft.data.build(recipe, tokenizer, get_plugins())
    seconds = time.perf_counter() - started
    report = built.reports[0]
    return {"seconds": seconds, "records": len(built.dataset), "tokens": report.tokens,
            "trained_tokens": report.trained_tokens}


PATHS = {
    "plain": run_plain,
    "plain-2proc": lambda data, model: run_plain(data, model, processes=2),
    "portaft": run_portaft,
}


def measure(path: str, data: str, model: str) -> dict:
    """One measurement in a fresh process with its own empty datasets cache."""
    with tempfile.TemporaryDirectory(prefix="portaft-bench-cache-") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "TOKENIZERS_PARALLELISM": "true"}
        out = subprocess.run([sys.executable, __file__, "--one", path, "--data", data, "--model", model],
                             env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=str(REPO / "examples" / "models" / "tiny-deepseek"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--one", choices=list(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(PATHS[args.one](args.data, args.model)))
        return

    if not Path(args.model).is_dir():
        from portaft.testing import build_tiny_model

        build_tiny_model(Path(args.model))
    with tempfile.TemporaryDirectory(prefix="portaft-bench-") as folder:
        data = str(Path(folder) / "conversations.jsonl")
        with open(data, "w", encoding="utf-8") as handle:
            for row in synthetic_conversations(args.records):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        runs: dict[str, list[dict]] = {path: [] for path in PATHS}
        for round_number in range(args.rounds):
            for path in PATHS:
                result = measure(path, data, args.model)
                runs[path].append(result)
                print(f"round {round_number + 1} {path}: {result['seconds']:.1f} s", flush=True)
    write_results(args, runs)


def write_results(args, runs: dict[str, list[dict]]) -> None:
    import datasets
    import tokenizers
    import transformers

    summary = {}
    for path, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        summary[path] = {"median_seconds": round(seconds, 2), "all_seconds": [round(r["seconds"], 2) for r in results],
                         "records": results[0]["records"], "tokens": results[0]["tokens"],
                         "tokens_per_second": round(results[0]["tokens"] / seconds)}
    ratio = summary["portaft"]["median_seconds"] / summary["plain"]["median_seconds"]
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": {"python": platform.python_version(), "datasets": datasets.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "records": args.records,
        "rounds": args.rounds,
        "results": summary,
        "portaft_time_over_plain": round(ratio, 3),
    }
    lines = [
        f"# Preprocessing {args.records} conversations ({record['date']}, {record['machine']})",
        "",
        "| path | median seconds | rounds | tokens | tokens/s |",
        "|---|---|---|---|---|",
    ]
    for path, s in summary.items():
        lines.append(f"| {path} | {s['median_seconds']} | {', '.join(map(str, s['all_seconds']))} | "
                     f"{s['tokens']} | {s['tokens_per_second']} |")
    lines += ["", f"portaft takes {ratio:.2f}x the time of the plain batched map "
                  f"(versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())})."]
    result_files.write_results(args.out, "preprocess", record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
