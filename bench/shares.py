"""How evenly several processes share the steps of the throughput benchmark's sft mix.

    python bench/shares.py                          # 3840 samples, batch 32 a process, 20 orders
    python bench/shares.py --samples 256 --trials 2 --out /tmp/smoke   # CI smoke

Under torchrun accelerate gives each process the same number of samples a step; with
flattened batches a process's work is its tokens, and a step waits for the busiest
process. For 2, 4 and 8 processes this counts, over random orders of the benchmark's own
sft samples (`throughput.py`'s data, tokenized by portaft's data step with the DeepSeek
tokenizer), how many more tokens the busiest process has than the processes' mean:
with accelerate's shares, and with portaft's shares by tokens (the cuda policy switch
`balanced_shares`, `portaft/data/shares.py`). Tokens, not time: where a step's time
follows its tokens, the ratio of the two is what sharing by tokens can gain; a GPU run
(`throughput.py --nproc 2 --portaft-with balanced_shares`) says what it does gain.
Results go to OUT/shares.json and OUT/shares.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import result_files  # bench/result_files.py

BENCH = Path(__file__).resolve().parent
PROCESSES = (2, 4, 8)


def sample_lengths(samples: int, folder: Path) -> list[int]:
    """Tokens of each of the benchmark's sft samples, as portaft's data step makes them."""
    sys.path.insert(0, str(BENCH))
    from throughput_settings import MAX_LENGTH, sft_conversations  # bench/throughput_settings.py

    import portaft.data
    from portaft import load_recipe
    from portaft.plugins import get_plugins
    from portaft.testing import build_tiny_model
    from transformers import AutoTokenizer

    model = build_tiny_model(folder / "tiny")  # the DeepSeek tokenizer, as the benchmark's models
    data = folder / "sft.jsonl"
    data.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in sft_conversations(samples)),
                    encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(model)
    portaft.data.prepare_tokenizer(tokenizer)
    recipe = load_recipe({"model": {"name_or_path": str(model)}, "data": [{"path": str(data)}],
                          "template": "deepseek", "max_length": MAX_LENGTH["sft"],
                          "train": {"output_dir": str(folder / "out")}})
    return portaft.data.build(recipe, tokenizer, get_plugins()).lengths


def busiest_over_mean(lengths: list[int], processes: int, batch: int, trials: int) -> dict:
    """Mean over every step of `trials` random orders: the busiest process's tokens over the
    processes' mean, minus 1, with accelerate's shares and with shares by tokens."""
    from portaft.data.shares import shares_by_tokens

    def excess(shares: list[list[int]]) -> float:
        tokens = [sum(lengths[i] for i in share) for share in shares]
        return max(tokens) / statistics.mean(tokens) - 1

    before, after = [], []
    order = list(range(len(lengths)))
    for trial in range(trials):
        random.Random(trial).shuffle(order)
        step = batch * processes
        for start in range(0, len(order) - step + 1, step):
            batches = [order[start + batch * p:start + batch * (p + 1)] for p in range(processes)]
            before.append(excess(batches))
            after.append(excess(shares_by_tokens(batches, lengths)))
    if not before:
        raise SystemExit(f"bench/shares.py: {len(lengths)} samples make no step of {processes} x {batch}: "
                         "raise --samples")
    by_samples, by_tokens = statistics.mean(before), statistics.mean(after)
    return {"steps": len(before), "accelerate": round(by_samples, 5), "by_tokens": round(by_tokens, 5),
            "step_time_if_it_follows_tokens": round((1 + by_tokens) / (1 + by_samples), 4)}


def markdown(record: dict) -> str:
    lines = ["# How evenly several processes share a step (sft mix)", "",
             f"{record['samples']} samples of `throughput.py`'s sft mix (mean {record['mean_tokens']} tokens, at most "
             f"{record['longest']}), {record['batch']} a process a step, {record['trials']} random orders; the "
             "busiest process's tokens over the processes' mean. Tokens, not time: `bench/shares.py`.", "",
             "| processes | steps | accelerate's shares (same samples each) | shares by tokens (`balanced_shares`) "
             "| step time, if it follows tokens |",
             "|---|---|---|---|---|"]
    for processes, r in record["results"].items():
        lines.append(f"| {processes} | {r['steps']} | +{r['accelerate']:.2%} | +{r['by_tokens']:.3%} | "
                     f"x{r['step_time_if_it_follows_tokens']:.3f} |")
    return "\n".join(lines + ["", f"{record['date']}, portaft's data step, the DeepSeek tokenizer."]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3840)
    parser.add_argument("--batch", type=int, default=32, help="samples a process a step (the benchmark's Qwen batch)")
    parser.add_argument("--trials", type=int, default=20, help="random orders of the samples")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        lengths = sample_lengths(args.samples, Path(folder))
    record = {"benchmark": "shares", "date": time.strftime("%Y-%m-%d"), "samples": len(lengths),
              "mean_tokens": round(statistics.mean(lengths), 1), "longest": max(lengths), "batch": args.batch,
              "trials": args.trials,
              "results": {str(n): busiest_over_mean(lengths, n, args.batch, args.trials) for n in PROCESSES}}
    result_files.write_results(args.out, "shares", record, markdown(record))


if __name__ == "__main__":
    main()
