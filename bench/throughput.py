"""Training throughput on one GPU: the seed tutorial's settings, tuned plain HF, portaft (issue 6).

    python bench/throughput.py --shape qwen2.5-0.5b --lengths sft --rounds 3 --steps 30 --warmup 5 --seed-steps 12
    python bench/throughput.py --summarise bench/results          # throughput.md from every throughput-*.json
    python bench/throughput.py --shape tiny --lengths sft --rounds 1 --steps 2 --warmup 1 --seed-steps 2 \\
        --samples 16 --out /tmp/smoke                              # CPU smoke run (CI): its timings mean nothing
    python bench/throughput.py --device npu --shape qwen2.5-0.5b --paths tuned,portaft   # the same tables on Ascend

A model of a real shape with random weights (bench/models.py; `tiny` is portaft's
2-layer test model) trains with LoRA r=64 on all linear layers on one fixed synthetic
chat set: `sft` (lengths of a typical SFT mix, mean about 290 tokens, max_length 1024)
or `4k` (long conversations cut at max_length 4096: nearly every sample 4096 tokens).
The `tiny` shape trains the same mixes with texts and max_length 8x shorter. Paths:

- seed: the seed tutorial's settings: transformers Trainer + peft, DataCollatorForSeq2Seq
  (padded), batch 2 x gradient accumulation 8, gradient checkpointing, adamw_torch.
- tuned: plain transformers at its best: DataCollatorWithFlattening (padding-free),
  Liger kernels (CUDA only), no checkpointing, batch 32 (16 for the 7B shape; at 4k: 4, 1).

--device (auto: cuda where a GPU is visible, else cpu) picks cuda, npu or cpu; on npu
(never run on Ascend hardware so far) torch_npu is imported through portaft with the
platform's settings, steps are timed with torch.npu events, and portaft's path runs the
npu backend with its Ascend speed-ups (--portaft-without takes their names).
- portaft: `portaft.run` of the recipe a user writes (the YAML is in the JSON), nothing
  benchmark-specific in it; the batch of tuned unless --portaft-batch says otherwise.

A tuned or portaft run out of GPU memory runs again at half the batch (the attempt is
kept in the JSON and the table says so); the seed path keeps the tutorial's settings.

All three train the same token ids: seed and tuned take the rows of portaft's own data
step (`portaft.data.build`). Each (path, round) is its own process, the paths' order
rotates from round to round, and a path that fails (out of memory...) is recorded
with its error while the others go on. Inside each process one TrainerCallback (for
portaft through its `register_callbacks` plugin hook) times optimizer steps with CUDA
events after the warm-up steps (a step in which torch.compile compiled a graph is left
out too, and listed), and a forward pre-hook on the model counts the tokens of
every micro-batch that ran: useful (non-pad) tokens, trained tokens (labels != -100),
samples. MFU = useful tokens/s x 4 x N / peak, N = the parameters in matmuls (all but
the input embedding; a tied one counts once, as the LM head): forward 2N + backward 2N
(frozen weights get no weight gradients; LoRA and attention are left out).
Results: OUT/throughput-SHAPE-LENGTHS.json and .md, and OUT/throughput.md for all.

Code: this file holds the driver (`drive`, `run_rounds`, the child processes it starts)
and main(); throughput_settings.py the settings and data sets, throughput_paths.py the
worker (one path, one round), throughput_meter.py the step meter and the profile's
report, throughput_results.py the summary, tables and merged files (all in bench/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# bench/throughput_*.py: sibling modules (`python bench/throughput.py` puts bench/ first on sys.path)
from throughput_paths import choose_device, portaft_recipe, prepare, recipe_path, run_path
from throughput_results import merge, result_name, summarise_runs, write_record, write_summary
from throughput_settings import (BATCH, DEFAULT_SPEED_UPS, FIRST_LOSSES, LORA, MAX_LENGTH, NPU_SPEED_UPS,
                                 OPT_IN_SPEED_UPS, PATHS,
                                 SCALE, SEED_BATCH, SEED_ACCUMULATION, SHAPES, long_conversations,
                                 sft_conversations)

BENCH = Path(__file__).resolve().parent


# --- the driver ---------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> Path:
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # several processes get a file of their own: one OUT holds both and its table the scaling
    name = result_name(args.shape, args.lengths, args.nproc)
    scale = SCALE.get(args.shape, 1)
    batch = args.batch or BATCH[args.shape][args.lengths]
    batches = {"seed": SEED_BATCH, "tuned": batch, "portaft": args.portaft_batch or batch}
    config = {"shape": args.shape, "lengths": args.lengths, "max_length": MAX_LENGTH[args.lengths] // scale,
              "steps": args.steps, "seed_steps": args.seed_steps or args.steps, "warmup": args.warmup,
              "logging_steps": args.logging_steps, "work": str(work), "portaft_without": args.portaft_without,
              "portaft_with": args.portaft_with, "nproc": args.nproc, "device_asked": args.device,
              "profile": str(out / f"profile-{name}") if args.profile else None,
              "lora": LORA if args.lora_dropout is None else LORA | {"dropout": args.lora_dropout}}
    if min(config["steps"], config["seed_steps"]) <= args.warmup:
        raise SystemExit("--steps and --seed-steps must be larger than --warmup: nothing would be measured")
    samples = args.samples or max(config["steps"] * max(batches.values()) * args.nproc,
                                  config["seed_steps"] * SEED_BATCH * SEED_ACCUMULATION)
    data = work / f"chat-{name}-{samples}.jsonl"
    rows = (sft_conversations if args.lengths == "sft" else long_conversations)(samples, scale)
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config_file = work / f"config-{name}.json"
    config_file.write_text(json.dumps(config))
    prepared = _subprocess_json(["--prepare", str(config_file)], work, args.worker_timeout)
    config.update(prepared, data=str(data))
    config_file.write_text(json.dumps(config))

    def launch(path: str, round_number: int, batch: int) -> dict:
        if path == "portaft":
            recipe = portaft_recipe(config, batch)
            recipe_path(config, batch).write_text(_yaml(recipe), encoding="utf-8")
            shutil.rmtree(recipe["train"]["output_dir"], ignore_errors=True)  # else it resumes or skips
        try:
            return _subprocess_json(["--worker", path, str(config_file), "--batch", str(batch)], work,
                                    args.worker_timeout, log=f"{path}-{round_number}-batch{batch}",
                                    nproc=args.nproc)
        except RuntimeError as exc:  # the process died: the end of its log is the error
            return {"error": str(exc)}

    result_file = out / f"throughput-{name}.json"
    earlier = json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else {}
    # paths not run now keep their earlier runs; with --append the paths run now keep theirs too
    kept = [r for r in earlier.get("runs", []) if args.append or r["path"] not in args.paths]
    kept_oom = [r for r in earlier.get("out_of_memory", []) if args.append or r["path"] not in args.paths]
    first_round = 1 + max((r["round"] for r in kept), default=0) if args.append else 1
    for run in kept if args.append else []:  # start where the earlier runs found room
        if "tokens_per_second" in run and run["path"] != "seed":
            batches[run["path"]] = run["batch"]

    def save(runs: list[dict], out_of_memory: list[dict]) -> None:
        run = runs[-1]
        print(f"round {run['round']} {run['path']} (batch {run['batch']}): " + (
            f"{run['tokens_per_second']:,.0f} useful tokens/s" if "tokens_per_second" in run
            else run.get("skipped") or run.get("error", "?").splitlines()[0]), flush=True)
        record = {"benchmark": "throughput", "shape": args.shape, "lengths": args.lengths,
                  "date": datetime.date.today().isoformat(), "device": prepared["device"], "gpu": prepared["gpu"],
                  "matmul_peak_tflops": prepared["matmul_peak_tflops"], "nproc": args.nproc,
                  "settings": {k: config[k] for k in ("max_length", "steps", "seed_steps", "warmup", "logging_steps")}
                  | {"rounds": first_round + args.rounds - 1, "lora": config["lora"]},
                  "recipe": portaft_recipe(config, batches["portaft"]),
                  "runs": kept + runs, "out_of_memory": kept_oom + out_of_memory}
        record["summary"] = summarise_runs(record)
        write_record(out, name, record)  # after every run

    run_rounds(args.paths, range(first_round, first_round + args.rounds), batches, launch, save)
    summary = write_summary(out)
    print(result_file.with_suffix(".md").read_text(encoding="utf-8"))
    return summary


def run_rounds(paths: list[str], rounds: range, batches: dict[str, int], launch, save) -> None:
    """Every round runs each path once, the order rotating so each path takes each place.
    A path out of memory runs again at half its batch and keeps that batch in later rounds;
    the attempt is kept apart (out_of_memory), not counted as a round. The seed path keeps
    the tutorial's settings whatever happens."""
    runs: list[dict] = []
    out_of_memory: list[dict] = []
    for round_number in rounds:
        shift = (round_number - 1) % len(paths)
        for path in paths[shift:] + paths[:shift]:
            while True:
                run = {"path": path, "round": round_number, "batch": batches[path],
                       **launch(path, round_number, batches[path])}
                if path == "seed" or batches[path] == 1 or "out of memory" not in run.get("error", "").lower():
                    break
                out_of_memory.append({"path": path, "batch": batches[path], "error": run["error"]})
                batches[path] //= 2
            runs.append(run)
            save(runs, out_of_memory)


def _subprocess_json(arguments: list[str], work: Path, timeout: float, log: str = "prepare", nproc: int = 1) -> dict:
    """Run this script with `arguments` in the work folder; it writes its result as JSON, its
    output goes to a log.
    `nproc` > 1: as that many processes under torchrun, as `portaft run --nproc` launches them."""
    log_file, result = work / "logs" / f"{log}.log", work / "logs" / f"{log}.json"
    log_file.parent.mkdir(exist_ok=True)
    result.unlink(missing_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w", encoding="utf-8") as handle:
        try:
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
            done = subprocess.run([sys.executable, *launcher, str(Path(__file__).resolve()), *arguments,
                                   "--result", str(result)],
                                  cwd=work, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"no result within {timeout:.0f} s (log: {log_file})") from None
    if not result.exists():
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"exit code {done.returncode} (log: {log_file}):\n" + "\n".join(tail))
    return json.loads(result.read_text(encoding="utf-8"))


def _yaml(recipe: dict) -> str:
    import yaml

    return "# portaft's path of bench/throughput.py: the recipe as a user writes it\n" + yaml.safe_dump(
        recipe, sort_keys=False, allow_unicode=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="qwen2.5-0.5b")
    parser.add_argument("--lengths", choices=list(MAX_LENGTH), default="sft")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated: seed,tuned,portaft")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--append", action="store_true",
                        help="add these rounds to OUT's earlier ones (a run split to fit a time limit)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of tuned and portaft")
    parser.add_argument("--seed-steps", type=int, help="optimizer steps of the (slow) seed path; default --steps")
    parser.add_argument("--logging-steps", type=int, default=1,
                        help="every path's logging_steps (a log reads the loss: one device sync); the first "
                             f"{FIRST_LOSSES} steps always log, their losses are compared between the paths")
    parser.add_argument("--warmup", type=int, default=5, help="first optimizer steps left out of the measurement")
    parser.add_argument("--batch", type=int, help="tuned and portaft per-device batch (default per shape)")
    parser.add_argument("--portaft-batch", type=int, help="portaft's recipe batch, when it must differ (memory)")
    parser.add_argument("--device", choices=("auto", "cuda", "npu", "cpu"), default="auto",
                        help="where every path trains (auto: cuda where a GPU is visible, else cpu)")
    parser.add_argument("--portaft-without", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                        default=[], metavar="SPEEDUPS",
                        help=f"ablation: the cuda backend without these ({','.join(DEFAULT_SPEED_UPS)})")
    parser.add_argument("--portaft-with", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                        default=[], metavar="SPEEDUPS",
                        help=f"ablation: the cuda backend with these ({','.join(OPT_IN_SPEED_UPS)})")
    parser.add_argument("--lora-dropout", type=float, metavar="P",
                        help=f"every path's LoRA dropout (default {LORA['dropout']}); 0 makes compiled and eager "
                             "runs draw no random masks, so their losses can be compared step by step")
    parser.add_argument("--nproc", type=int, default=1,
                        help="portaft path only: that many GPUs (processes under torchrun, as portaft run --nproc)")
    parser.add_argument("--profile", action="store_true",
                        help="write OUT/profile-SHAPE-LENGTHS-PATH.txt: torch.profiler's kernels of two measured steps, "
                             "then where the host waited in the next two (profiled with Python stacks)")
    parser.add_argument("--samples", type=int, help="synthetic samples (default: as many as the longest path uses)")
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "portaft-bench"))
    parser.add_argument("--worker-timeout", type=float, default=1800)
    parser.add_argument("--summarise", metavar="OUT", help="only rebuild OUT/throughput.md from OUT/throughput-*.json")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only write OUT's table from these result files' rounds (one benchmark run apart)")
    parser.add_argument("--prepare", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if args.summarise:
        print(write_summary(Path(args.summarise)).read_text(encoding="utf-8"))
    elif args.merge:
        print(merge([Path(f) for f in args.merge], Path(args.out)).read_text(encoding="utf-8"))
    elif args.prepare:
        Path(args.result).write_text(json.dumps(prepare(json.loads(Path(args.prepare).read_text()))))
    elif args.worker:
        path, config = args.worker
        result = run_path(path, json.loads(Path(config).read_text()), args.batch)
        if os.environ.get("RANK", "0") == "0":  # under torchrun the first process writes for all
            Path(args.result).write_text(json.dumps(result))
    else:
        args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
        speed_ups = set(DEFAULT_SPEED_UPS + OPT_IN_SPEED_UPS + (NPU_SPEED_UPS if args.device == "npu" else ()))
        if set(args.portaft_without + args.portaft_with) - speed_ups:
            parser.error(f"--portaft-without/--portaft-with: choose from {', '.join(sorted(speed_ups))}")
        if args.nproc > 1 and args.paths != ["portaft"]:
            parser.error("--nproc: measures the portaft path only (--paths portaft)")
        unknown = sorted(set(args.paths) - set(PATHS))
        if unknown:
            parser.error(f"--paths: unknown {', '.join(unknown)}; choose from {', '.join(PATHS)}")
        if args.device != "auto":
            try:
                choose_device(args.device)
            except SystemExit as exc:
                parser.error(str(exc))
        drive(args)


if __name__ == "__main__":
    main()
