"""How long the compiled decoder layers take to compile (issue 28's cold compile), this tree
against another, each round in a fresh process with an empty Inductor cache.

    python bench/compile_time.py --rounds 2 --against /path/to/other/checkout --out bench/results/NAME

A model (--model: a folder; by default portaft.testing's tiny model, built in a temporary
folder, as the example's) with a LoRA adapter on all linear layers (r 8, or --rank) gets
portaft's `compile_layers`; one forward and backward pass at one
length (the compile, timed) and one at another (dynamic shapes: nothing should compile). Kept
per round: both passes' seconds, how many graphs dynamo compiled, and how many times
AOTAutograd traced one (a restarted analysis traces again). --device cuda runs in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path



def worker(model: str, rank: int, device: str) -> dict:
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import portaft
    from portaft.compat import model_dtype_kwargs
    from portaft.speed_ups.compiled_layers import compile_layers

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model, **model_dtype_kwargs(dtype)).to(device)
    adapted = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    compile_layers(adapted.get_base_model())
    adapted.train()
    seconds = []
    for length in (937, 1021):
        ids = torch.randint(5, 100, (1, length), device=device)
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = adapted(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(round(time.perf_counter() - started, 2))
    counters = torch._dynamo.utils.counters
    return {"portaft": str(Path(portaft.__file__).parent.parent), "compile_s": seconds[0],
            "second_length_s": seconds[1], "graphs": counters["stats"]["unique_graphs"],
            "aot_traces": counters["aot_autograd"]["total"]}


def one_round(tree: str | None, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor", "TRITON_CACHE_DIR": f"{cache}/triton"}
        if tree:
            env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        done = subprocess.run([sys.executable, __file__, "--worker", args.model, str(args.rank), args.device],
                              env=env, capture_output=True, text=True, timeout=1800, cwd=cache)
        if done.returncode != 0:
            return {"error": done.stderr[-2000:]}
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: portaft.testing's tiny model, built here)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against", help="another checkout: its portaft, alternated with this tree's")
    parser.add_argument("--out", help="folder for compile-time.json and .md")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, rank, device = args.worker
        print(json.dumps(worker(model, int(rank), device)))
        return
    if args.model is None:
        from portaft.testing import build_tiny_model

        args.model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="compile-time-")) / "tiny"))
    trees = {"this": None, **({"against": args.against} if args.against else {})}
    rounds = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():  # alternated, so a busy machine weighs on both alike
            rounds[name].append(one_round(tree, args))
            print(name, json.dumps(rounds[name][-1])[:300], flush=True)
    record = {"command": "python bench/compile_time.py " + " ".join(sys.argv[1:]), "model": args.model,
              "device": args.device, "rank": args.rank, "rounds": rounds}
    if args.out:
        write(Path(args.out), record)


def write(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile-time.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = ["| tree | round | compile (first pass) s | second length s | graphs | AOTAutograd traces |",
            "|---|---|---|---|---|---|"]
    for name, results in record["rounds"].items():
        for index, result in enumerate(results, 1):
            if "error" in result:
                rows.append(f"| {name} | {index} | failed | | | |")
                continue
            rows.append(f"| {name} ({result['portaft']}) | {index} | {result['compile_s']} | "
                        f"{result['second_length_s']} | {result['graphs']} | {result['aot_traces']} |")
    (out / "compile-time.md").write_text(f"# Compile time of the decoder layers ({record['device']})\n\n```bash\n"
                                         f"{record['command']}\n```\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
