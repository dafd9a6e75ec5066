"""Preprocessing speed: portaft's data step against a plain batched `datasets.map`.

    python bench/preprocess.py                    # 100k conversations, 3 rounds
    python bench/preprocess.py --records 2000 --rounds 1 --out /tmp/smoke   # CI smoke
    python bench/preprocess.py --records 55000 --rounds 5 --paths validate --against /tmp/base --name NAME

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
- validate (only when asked, `--paths`): the whole `portaft validate RECIPE` command,
  from the interpreter's start to its exit, as a user waits for it.

Each measurement runs in a fresh process with an empty datasets cache, the paths
alternate, and the median of the rounds is reported, with the process's CPU seconds
(user + system: steadier than wall time on a shared machine). `--against DIR` runs
every path with DIR's portaft too (PYTHONPATH=DIR, e.g. a `git worktree add DIR
COMMIT` of the code before a change), as PATH@COMMIT, in alternating order. Results go
to OUT/NAME.json and OUT/NAME.md (NAME: preprocess), with the command that made them.
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


def run_validate(data: str, model: str) -> dict:
    """`portaft validate` of a recipe training on `data`; its time is the whole process's (measure)."""
    import yaml

    from portaft.cli import main

    recipe = Path(data).with_name("recipe.yaml")
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": model}, "data": [{"path": data}],
                                      "template": "deepseek", "max_length": 4096,
                                      "train": {"output_dir": str(Path(data).with_name("out"))}}), encoding="utf-8")
    if main(["validate", str(recipe)]) != 0:
        raise SystemExit("portaft validate refused the benchmark's recipe")
    return {"seconds": None, "records": sum(1 for _ in open(data, encoding="utf-8")), "tokens": None}


PATHS = {
    "plain": run_plain,
    "plain-2proc": lambda data, model: run_plain(data, model, processes=2),
    "portaft": run_portaft,
    "validate": run_validate,
}
DEFAULT_PATHS = ["plain", "plain-2proc", "portaft"]


def measure(path: str, data: str, model: str, code: str | None = None) -> dict:
    """One measurement in a fresh process with its own empty datasets cache; `code`: a
    folder whose portaft is imported instead of this checkout's."""
    import resource

    with tempfile.TemporaryDirectory(prefix="portaft-bench-cache-") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "TOKENIZERS_PARALLELISM": "true",
               "PYTHONPATH": code or str(REPO)}
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--one", path, "--data", data, "--model", model],
                             env=env, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - started
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds"] = wall if result["seconds"] is None else result["seconds"]
    result["cpu_seconds"] = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    return result


def code_label(folder: str) -> str:
    """The short commit of a checkout, else its folder's name."""
    done = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or Path(folder).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=str(REPO / "examples" / "models" / "tiny-deepseek"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=DEFAULT_PATHS)
    parser.add_argument("--against", metavar="DIR", help="also run every path with DIR's portaft (PYTHONPATH=DIR)")
    parser.add_argument("--name", default="preprocess", help="results go to OUT/NAME.json and OUT/NAME.md")
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
        load_at_start = os.getloadavg()[0]
        codes = [(None, "")] + ([(args.against, "@" + code_label(args.against))] if args.against else [])
        runs: dict[str, list[dict]] = {path + label: [] for path in args.paths for _, label in codes}
        for round_number in range(args.rounds):
            for code, label in codes[::-1] if round_number % 2 else codes:  # each side first in every other round
                for path in args.paths:
                    result = measure(path, data, args.model, code)
                    runs[path + label].append(result)
                    print(f"round {round_number + 1} {path + label}: {result['seconds']:.1f} s, "
                          f"{result['cpu_seconds']:.1f} CPU s", flush=True)
    write_results(args, runs, [load_at_start, os.getloadavg()[0]])


def write_results(args, runs: dict[str, list[dict]], load: list[float]) -> None:
    import datasets
    import tokenizers
    import transformers

    summary = {}
    for path, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        tokens = results[0]["tokens"]
        summary[path] = {"median_seconds": round(seconds, 2), "all_seconds": [round(r["seconds"], 2) for r in results],
                         "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in results), 2),
                         "all_cpu_seconds": [round(r["cpu_seconds"], 2) for r in results],
                         "records": results[0]["records"], "tokens": tokens,
                         "tokens_per_second": round(tokens / seconds) if tokens else None}
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "load_average": load,  # 1-minute load at the start and at the end: the machine may be shared
        "versions": {"python": platform.python_version(), "datasets": datasets.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "command": "python bench/preprocess.py " + " ".join(sys.argv[1:]),
        "records": args.records,
        "rounds": args.rounds,
        "results": summary,
    }
    lines = [
        f"# Preprocessing {args.records} conversations ({record['date']}, {record['machine']})",
        "",
        f"`{record['command']}`",
        "",
        "| path | median seconds | rounds | median CPU seconds | rounds (CPU) | tokens | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, s in summary.items():
        lines.append(f"| {path} | {s['median_seconds']} | {', '.join(map(str, s['all_seconds']))} | "
                     f"{s['median_cpu_seconds']} | {', '.join(map(str, s['all_cpu_seconds']))} | "
                     f"{s['tokens'] or '-'} | {s['tokens_per_second'] or '-'} |")
    lines.append("")
    if "portaft" in summary and "plain" in summary:
        ratio = summary["portaft"]["median_seconds"] / summary["plain"]["median_seconds"]
        record["portaft_time_over_plain"] = round(ratio, 3)
        lines.append(f"portaft takes {ratio:.2f}x the time of the plain batched map.")
    for path in args.paths if args.against else []:
        base = next(name for name in summary if name.startswith(path + "@"))
        over = {key: round(summary[path][key] / summary[base][key], 3) for key in ("median_seconds",
                                                                                 "median_cpu_seconds")}
        record.setdefault("time_over_" + base.split("@")[1], {})[path] = over
        lines.append(f"{path}: {over['median_seconds']:.3f}x the wall time and {over['median_cpu_seconds']:.3f}x "
                     f"the CPU time of {base} (medians, rounds alternated).")
    lines.append(f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}; 1-minute load "
                 f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end.")
    result_files.write_results(args.out, args.name, record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
