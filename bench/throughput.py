"""Training throughput on one GPU: the seed tutorial's settings, tuned plain HF, portaft (issue 6).

    python bench/throughput.py --shape qwen2.5-0.5b --lengths sft --rounds 3 --steps 30 --warmup 5 --seed-steps 12
    python bench/throughput.py --summarise bench/results          # throughput.md from every throughput-*.json
    python bench/throughput.py --shape tiny --lengths sft --rounds 1 --steps 2 --warmup 1 --seed-steps 2 \\
        --samples 16 --out /tmp/smoke                              # CPU smoke run (CI): its timings mean nothing

A model of a real shape with random weights (bench/models.py; `tiny` is portaft's
2-layer test model) trains with LoRA r=64 on all linear layers on one fixed synthetic
chat set: `sft` (lengths of a typical SFT mix, mean about 290 tokens, max_length 1024)
or `4k` (long conversations cut at max_length 4096: nearly every sample 4096 tokens).
The `tiny` shape trains the same mixes with texts and max_length 8x shorter. Paths:

- seed: the seed tutorial's settings: transformers Trainer + peft, DataCollatorForSeq2Seq
  (padded), batch 2 x gradient accumulation 8, gradient checkpointing, adamw_torch.
- tuned: plain transformers at its best: DataCollatorWithFlattening (padding-free),
  Liger kernels (CUDA only), no checkpointing, batch 32 (16 for the 7B shape; at 4k: 4, 1).
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
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PATHS = ("seed", "tuned", "portaft")
# the cuda backend's policy switches an ablation may turn off (on by default) or on (off by default);
# varlen_without_masks is on by default under several processes only, so it is in both
DEFAULT_SPEED_UPS = ("padding_free", "varlen_attention", "varlen_without_masks", "cudnn_attention", "fused_loss",
                     "larger_loss_chunks", "fused_norms", "compile_layers", "queue_ahead")
OPT_IN_SPEED_UPS = ("varlen_without_masks", "fused_lora", "balanced_processes")
SHAPES = ("qwen2.5-0.5b", "llama-3.2-1b", "deepseek-llm-7b", "tiny")
MAX_LENGTH = {"sft": 1024, "4k": 4096}
# tuned and portaft per-device batch; at 4k a batch of 32 sequences would not fit
BATCH = {"qwen2.5-0.5b": {"sft": 32, "4k": 4}, "llama-3.2-1b": {"sft": 32, "4k": 4},
         "deepseek-llm-7b": {"sft": 16, "4k": 1}, "tiny": {"sft": 8, "4k": 2}}
# the tiny shape (CPU smoke runs) trains the same length mixes with every text 8x shorter
# and max_length / 8: its 129k-token vocabulary makes each token cost on a CPU
SCALE = {"tiny": 8}
SEED_BATCH, SEED_ACCUMULATION = 2, 8  # the seed tutorial's
LORA = {"r": 64, "alpha": 128, "dropout": 0.05, "target_modules": "all-linear"}
LEARNING_RATE = 1e-4
FIRST_LOSSES = 3  # the first steps whose losses must agree between the paths (same data, same initial weights)
SEED = 42  # TrainingArguments' default, also what portaft uses when the recipe sets none
SPEC_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12}  # dense bf16, NVIDIA's data sheets


# --- data ---------------------------------------------------------------------------------

TOKENS_PER_PHRASE = 5  # a phrase of bench/preprocess.py plus its comma, DeepSeek tokenizer
SFT_MEDIAN_TOKENS, SFT_SIGMA = 184, 0.75  # lognormal lengths: mean about 290 once cut at 1024


def sft_conversations(count: int, scale: int = 1, seed: int = 0) -> list[dict]:
    """Chats of a typical SFT length mix: lognormal lengths (tokenized with the deepseek
    template: median ~225, mean ~290, about 2% cut at 1024), 1-4 turns, replies longer
    than questions, a system prompt in 30%. `scale`: every text that many times shorter."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens = rng.lognormvariate(math.log(SFT_MEDIAN_TOKENS), SFT_SIGMA) / scale
        turns = rng.choices([1, 2, 3, 4], weights=[55, 25, 12, 8])[0]
        messages = [{"role": "system", "content": _text(rng, 12 / scale)}] if rng.random() < 0.3 else []
        for _ in range(turns):
            question = tokens / turns * rng.uniform(0.1, 0.4)
            messages += [{"role": "user", "content": _text(rng, question)},
                         {"role": "assistant", "content": _text(rng, tokens / turns - question)}]
        rows.append({"messages": messages})
    return rows


def long_conversations(count: int, scale: int = 1, seed: int = 0) -> list[dict]:
    """24-turn chats of 5,000+ tokens, short questions and long replies: cut at max_length
    4096, nearly every sample is 4096 tokens (a cut in a question drops that question)."""
    rng = random.Random(seed)
    return [{"messages": [m for _ in range(24) for m in (
        {"role": "user", "content": _text(rng, rng.randint(5, 15) / scale)},
        {"role": "assistant", "content": _text(rng, rng.randint(200, 400) / scale)})]} for _ in range(count)]


def _text(rng: random.Random, tokens: float) -> str:
    from preprocess import PHRASES  # bench/preprocess.py

    return "，".join(rng.choice(PHRASES) for _ in range(max(1, round(tokens / TOKENS_PER_PHRASE)))) + "。"


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
              "portaft_with": args.portaft_with, "nproc": args.nproc,
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


def portaft_recipe(config: dict, batch: int) -> dict:
    """The recipe a user writes for this run: model, data, template, LoRA, a few train: keys."""
    cuda = config["device"] == "cuda"
    output_dir = Path(config["work"]) / "runs" / f"portaft-{config['shape']}-{config['lengths']}"
    return {"backend": "cuda" if cuda else "cpu",
            "model": {"name_or_path": config["model"]},
            "data": [{"path": config["data"]}],
            "template": "deepseek",
            "max_length": config["max_length"],
            "lora": config.get("lora", LORA),
            "train": {"output_dir": str(output_dir), "per_device_train_batch_size": batch,
                      "learning_rate": LEARNING_RATE, "bf16": cuda, "max_steps": config["steps"],
                      "logging_steps": config.get("logging_steps", 1),
                      "save_strategy": "no", "report_to": "none"}}


def recipe_path(config: dict, batch: int) -> Path:
    return Path(config["work"]) / f"recipe-{config['shape']}-{config['lengths']}-batch{batch}.yaml"


def _subprocess_json(arguments: list[str], work: Path, timeout: float, log: str = "prepare", nproc: int = 1) -> dict:
    """Run this script with `arguments` in the work folder (never the repository root, whose
    portaft/ lacks portaft.backends); it writes its result as JSON, its output goes to a log.
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


# --- the worker: one path, one round ------------------------------------------------------


def prepare(config: dict) -> dict:
    """The model folder (built once), the device, and this GPU's measured bf16 matmul peak."""
    import torch

    folder = Path.cwd() / "models" / config["shape"]
    if config["shape"] == "tiny":
        from portaft.testing import build_tiny_model

        build_tiny_model(folder)
    else:
        from models import build_model  # bench/models.py

        build_model(folder, config["shape"])
    cuda = torch.cuda.is_available()
    return {"model": str(folder), "device": "cuda" if cuda else "cpu",
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "matmul_peak_tflops": round(matmul_peak() / 1e12, 1) if cuda else None}


def matmul_peak() -> float:
    """The best bf16 matmul FLOP/s of this GPU over a few large square sizes."""
    import torch

    best = 0.0
    for size in (4096, 8192, 16384):
        a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        repeats = max(5, int(2e13 / (2 * size**3)))
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3))
        del a, b
    return best


class Skipped(Exception):
    """This path cannot run with the installed libraries (the reason is recorded)."""


def run_path(path: str, config: dict, batch: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    meter = make_meter(config["warmup"], cuda, f"{config['profile']}-{path}.txt" if config.get("profile") else None)
    record: dict = {"versions": versions(), "gpu": torch.cuda.get_device_name() if cuda else None}
    try:
        run = {"seed": run_seed, "tuned": run_tuned, "portaft": run_portaft}[path]
        record["settings"] = run(config, batch, meter, cuda)
    except Skipped as exc:
        return {**record, "skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 (recorded: the other paths still run)
        import traceback

        traceback.print_exc()
        return {**record, "error": f"{type(exc).__name__}: {exc}"[:1500]}
    record.update(meter.results())
    record["data"] = data_report(config)
    return record


def run_seed(config: dict, batch: int, meter, cuda: bool) -> dict:
    _train_plain(config, meter, cuda, steps=config["seed_steps"], batch=batch, accumulation=SEED_ACCUMULATION,
                 checkpointing=True, flatten=False, liger=False, optim="adamw_torch")
    return {"gradient_accumulation_steps": SEED_ACCUMULATION, "gradient_checkpointing": True,
            "collator": "DataCollatorForSeq2Seq (padded)", "optim": "adamw_torch"}


def run_tuned(config: dict, batch: int, meter, cuda: bool) -> dict:
    from portaft.data.packing import packing_supported

    reason = packing_supported()
    if reason:  # flattened samples under sdpa would attend to each other: a wrong model, not a speed
        raise Skipped(reason)
    if cuda:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            raise RuntimeError("liger-kernel is not installed: pip install liger-kernel (the tuned path uses it)")
    _train_plain(config, meter, cuda, steps=config["steps"], batch=batch, accumulation=1, checkpointing=False,
                 flatten=True, liger=cuda, optim=None)
    return {"gradient_accumulation_steps": 1, "gradient_checkpointing": False,
            "collator": "DataCollatorWithFlattening (padding-free)", "liger_kernel": cuda}


def _train_plain(config: dict, meter, cuda: bool, *, steps: int, batch: int, accumulation: int, checkpointing: bool,
                 flatten: bool, liger: bool, optim: str | None) -> None:
    """Trainer + peft as a plain transformers script, on the rows of portaft's data step."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,
                              DataCollatorWithFlattening, Trainer, TrainingArguments, set_seed)

    from portaft.compat import model_dtype_kwargs, trainer_kwargs

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    dataset = _portaft_rows(config, tokenizer).dataset
    set_seed(SEED)  # before the model, as portaft does: the same LoRA initial weights
    model = AutoModelForCausalLM.from_pretrained(config["model"],
                                                 **model_dtype_kwargs(torch.bfloat16 if cuda else torch.float32))
    if flatten:  # with a KV cache transformers does not read flattened position_ids as sample boundaries
        model.config.use_cache = False
    if checkpointing:
        model.enable_input_require_grads()
    lora = config.get("lora", LORA)
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             target_modules=lora["target_modules"], task_type=TaskType.CAUSAL_LM))
    extra = {"use_liger_kernel": True} if liger else {}
    if optim:
        extra["optim"] = optim
    args = TrainingArguments(
        output_dir=str(Path.cwd() / "runs" / "plain"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, gradient_checkpointing=checkpointing, bf16=cuda, use_cpu=not cuda,
        learning_rate=LEARNING_RATE, max_steps=steps, logging_steps=config.get("logging_steps", 1),
        save_strategy="no", report_to="none", remove_unused_columns=False, seed=SEED, **extra)
    data_collator = (DataCollatorWithFlattening() if flatten
                     else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=data_collator, callbacks=[meter],
                      **trainer_kwargs(Trainer, tokenizer))
    trainer.train()


def run_portaft(config: dict, batch: int, meter, cuda: bool) -> dict:
    import portaft
    from portaft.plugins import get_plugins

    @portaft.hookimpl
    def register_callbacks(register):  # the plugin hook is how the meter gets into portaft's Trainer
        register(meter)

    get_plugins().register(types.SimpleNamespace(register_callbacks=register_callbacks), name="throughput-meter")
    without, adding = config.get("portaft_without") or [], config.get("portaft_with") or []
    if without or adding:  # an ablation: the cuda backend with speed-ups switched off or on (the same recipe)
        from portaft.backends.cuda import CUDA

        for speed_up in without:
            setattr(CUDA, speed_up, False)
        for speed_up in adding:
            setattr(CUDA, speed_up, True)
    recipe = recipe_path(config, batch)  # the driver has emptied its output_dir
    portaft.run(recipe)
    return {"recipe": str(recipe), "without": without, "with": adding}


def _portaft_rows(config: dict, tokenizer):
    import portaft.data
    from portaft import load_recipe

    portaft.data.prepare_tokenizer(tokenizer)
    return portaft.data.build(load_recipe(portaft_recipe(config, 1)), tokenizer)  # the batch changes no row


def data_report(config: dict) -> dict:
    """What the data step made of the synthetic set (the same for every path)."""
    from transformers import AutoTokenizer

    built = _portaft_rows(config, AutoTokenizer.from_pretrained(config["model"]))
    report = built.reports[0]
    return {"samples": report.samples, "tokens": report.tokens, "trained_tokens": report.trained_tokens,
            "mean_tokens": round(report.tokens / report.samples, 1), "shortest": min(built.lengths),
            "longest": max(built.lengths), "truncated": report.truncated}


def make_meter(warmup: int, cuda: bool, profile: str | None = None):
    """A TrainerCallback that times optimizer steps after `warmup` and counts the tokens of
    every micro-batch the model ran (a forward pre-hook), on the device: no extra syncs.
    A step in which torch.compile compiled a graph (the compiled layers meet a new kind of
    batch, e.g. the first 4k batch holding a shorter sample) is left out of the measurement
    and listed: a one-time cost of seconds that a run of 16 steps would otherwise spread
    over every step.
    With `profile` (a file), the two steps after the warm-up run under torch.profiler and
    its table of kernels by device time goes to that file; the two after those run under it
    again on a GPU, with Python stacks (which cost the host too much time to show its gaps),
    to say where the host waited (those steps' timings suffer)."""
    import torch
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def __init__(self):
            self.steps: list[list[tuple]] = []  # per optimizer step, per micro-batch: (useful, trained, samples)
            self.current: list[tuple] | None = None  # None outside a step: generation etc. is not counted
            self.begins: list = []
            self.ends: list = []
            # profiled pairs of steps, by the count of steps before them: the kernels, then on a
            # GPU where the host waited (with Python stacks)
            self.profile_after = (warmup, warmup + 2) if cuda else (warmup,)
            self.profiling = False
            # Python's full garbage collections while training: (step, host ms); each walks every
            # object the process holds, and a step where one falls waits for it
            self.full_collections: list[tuple[int, float]] = []
            self.collection_started = 0.0
            self.compiled_steps: list[int] = []  # 1-based numbers of the steps that compiled a graph
            self.graphs_before = 0
            gc.callbacks.append(self.on_collection)

        def on_collection(self, phase, info):
            if info["generation"] != 2 or not self.begins:
                return
            if phase == "start":
                self.collection_started = time.perf_counter()
            else:
                self.full_collections.append(
                    (len(self.begins), round((time.perf_counter() - self.collection_started) * 1e3, 1)))

        def mark(self):
            if not cuda:
                return time.perf_counter()
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(self.count, with_kwargs=True)
            self.parameters = matmul_parameters(model)
            self.attention = getattr(model.config, "_attn_implementation", None)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()  # the loaded model counts, loading's temporaries do not

        def count(self, module, args, kwargs):
            if self.current is None:
                return
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
            if mask is not None and mask.dim() == 2:  # padded: the mask marks the real tokens
                useful, samples = mask.sum(), ids.shape[0]
            else:  # flattened: every token is real; position ids restart at 0 per sample
                useful, samples = ids.numel(), ids.shape[0] if positions is None else (positions == 0).sum()
            self.current.append((useful, (kwargs["labels"] != -100).sum(), samples))

        def on_step_begin(self, args, state, control, **kwargs):
            self.current = []
            if profile and len(self.begins) in self.profile_after:
                from torch._C._profiler import _ExperimentalConfig

                stacks = len(self.begins) > warmup  # verbose: without it torch records no op's stack
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                                       + ([torch.profiler.ProfilerActivity.CUDA] if cuda else []),
                                                       with_stack=stacks, experimental_config=_ExperimentalConfig(verbose=stacks))
                self.profiler.start()
                self.profiling = True
            self.graphs_before = compiled_graphs()
            self.begins.append(self.mark())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step <= FIRST_LOSSES:  # logged whatever the recipe's logging_steps: paths compared by them
                control.should_log = True
            self.ends.append(self.mark())
            self.steps.append(self.current)
            if compiled_graphs() > self.graphs_before:
                self.compiled_steps.append(len(self.ends))
            self.current = None
            if self.profiling and len(self.ends) - 2 in self.profile_after:
                self.profiler.stop()
                self.profiling = False
                if cuda:
                    torch.cuda.synchronize()
                rank = int(os.environ.get("RANK", "0"))  # under torchrun: a file per process
                out = Path(profile if not rank else f"{profile[:-4]}-rank{rank}.txt")
                if len(self.ends) == warmup + 2:
                    out.write_text(profile_report(self.profiler, warmup, self.measured_ms(), cuda), encoding="utf-8")
                else:
                    with out.open("a", encoding="utf-8") as report:
                        report.write("\n" + "\n".join(wait_sites(self.profiler.events(), warmup + 2)) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            gc.callbacks.remove(self.on_collection)
            if self.profiling:  # the run ended inside a profiled pair: nothing to say
                self.profiler.stop()
            if cuda:
                torch.cuda.synchronize()
                self.peak = torch.cuda.max_memory_allocated() / 2**30
            self.losses = [entry["loss"] for entry in state.log_history if "loss" in entry]

        def step_ms(self) -> list[float]:
            """Each step's time, from the previous step's end (the first: from its own begin), so
            the batch fetch between steps counts; a slow step (a recompile, a host stall) shows."""
            marks = [self.begins[0]] + self.ends
            return [round(a.elapsed_time(b) if cuda else (b - a) * 1e3, 1) for a, b in zip(marks, marks[1:])]

        def measured_ms(self) -> float:
            """From the end of the warm-up to the latest step's end (CUDA events: call after a sync)."""
            start = self.ends[warmup - 1] if warmup else self.begins[0]
            return start.elapsed_time(self.ends[-1]) if cuda else (self.ends[-1] - start) * 1e3

        def results(self) -> dict:
            if len(self.ends) <= warmup:
                raise RuntimeError(f"{len(self.ends)} steps ran, none after the {warmup} warm-up steps")
            per_step = [[sum(int(batch[i]) for batch in step) for i in range(3)] for step in self.steps]
            compiled = [number in self.compiled_steps for number in range(1, len(self.ends) + 1)]
            by_rank = {}
            if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process's tokens
                counts = torch.tensor(per_step, device="cuda" if cuda else "cpu")
                gathered = [torch.zeros_like(counts) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(gathered, counts)
                per_step = torch.stack(gathered).sum(0).tolist()
                # a step waits for its busiest process: how uneven the processes' shares were
                by_rank = {"rank_step_tokens": [[step[0] for step in rank.tolist()] for rank in gathered]}
                # a compile in one process holds up the other: every process leaves that step out
                flags = torch.tensor(compiled, dtype=torch.int32, device=counts.device)
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                compiled = [bool(flag) for flag in flags.tolist()]
            compiled_steps = [i + 1 for i, flag in enumerate(compiled) if flag]
            measured = measured_indices({"steps": len(self.ends), "warmup": warmup, "compiled_steps": compiled_steps})
            if not measured:
                raise RuntimeError(f"every step after the {warmup} warm-up steps compiled a graph: none to measure")
            step_ms = self.step_ms()
            seconds = sum(step_ms[i] for i in measured) / 1e3
            useful, trained = (sum(per_step[s][i] for s in measured) for i in range(2))
            return {"steps": len(self.ends), "warmup": warmup, "measured_steps": len(measured),
                    "compiled_steps": compiled_steps,
                    "seconds": round(seconds, 4),
                    "tokens": useful, "trained_tokens": trained, "tokens_per_second": round(useful / seconds, 1),
                    "trained_tokens_per_second": round(trained / seconds, 1),
                    "step_seconds": round(seconds / len(measured), 4),
                    "peak_memory_gib": round(self.peak, 2) if cuda else None,
                    "step_tokens": [s[0] for s in per_step], "step_trained_tokens": [s[1] for s in per_step],
                    "step_samples": [s[2] for s in per_step], "micro_batches": [len(s) for s in self.steps],
                    "step_ms": step_ms, **by_rank,
                    "full_collections": [list(c) for c in self.full_collections],
                    "first_losses": self.losses[:FIRST_LOSSES], "losses": self.losses,
                    "matmul_parameters": self.parameters, "attention": self.attention}

    return Meter()


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def measured_indices(run: dict) -> list[int]:
    """0-based indices of a run's measured steps: after its warm-up, none that compiled."""
    # results written before compiles were left out have no warm-up of their own: all after it measured
    warmup = run["warmup"] if "warmup" in run else run["steps"] - run["measured_steps"]
    left_out = set(run.get("compiled_steps", ()))
    return [i for i in range(warmup, run["steps"]) if i + 1 not in left_out]


# host calls that wait for the device: where a step cannot run ahead of the GPU
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync")


def profile_report(profiler, warmup: int, wall_ms: float, cuda: bool) -> str:
    """The profiled steps in numbers first (is the GPU busy? how often does the host wait
    for it?), then the kernels by device time and the host's work by CPU time."""
    from torch.autograd import DeviceType

    events = profiler.events()
    lines = [f"two optimizer steps after {warmup} warm-up steps: {wall_ms:.1f} ms"]
    if cuda:
        # the GPU's own work: not the ranges code marks on its timeline (DDP's forward...)
        kernels = [(e.time_range.start, e.time_range.end, e.name) for e in events
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
        busy = covered([(start, end) for start, end, _ in kernels]) / 1e3
        talk = covered([(start, end) for start, end, name in kernels if "nccl" in name.lower()]) / 1e3
        lines.append(f"GPU busy {busy:.1f} ms ({busy / wall_ms:.0%}), of which collectives {talk:.1f} ms")
        waits = {}
        for event in events:
            if event.device_type == DeviceType.CPU and event.name in WAITS:
                count, total = waits.get(event.name, (0, 0.0))
                waits[event.name] = (count + 1, total + (event.time_range.end - event.time_range.start) / 1e3)
        launches = sum(1 for e in events if e.device_type == DeviceType.CPU and "LaunchKernel" in e.name)
        lines.append("host waiting for the GPU: " + (", ".join(
            f"{name} {count}x {total:.1f} ms" for name, (count, total) in sorted(waits.items())) or "never")
            + f"; kernel launches: {launches:,}")
        lines += idle_gaps(kernels, [e for e in events if e.device_type == DeviceType.CPU])
    averages = profiler.key_averages()
    if cuda:
        lines += ["", "by device time:", averages.table(sort_by="self_device_time_total", row_limit=45,
                                                         max_name_column_width=70)]
    lines += ["", "by CPU time (the host's own work):", averages.table(sort_by="self_cpu_time_total", row_limit=30,
                                                                         max_name_column_width=70)]
    return "\n".join(lines) + "\n"


def wait_sites(events, after: int, shown: int = 12) -> list[str]:
    """Where the host waited for the GPU, by the Python code that asked (a profile recorded
    with stacks): each sync, and each copy of 0.1 ms or more, under the innermost frame and
    the nearest three outside torch's own files. After a sync the GPU runs dry until the
    host launches again, so each site costs at least that launch latency a step."""
    from torch.autograd import DeviceType

    # On a GPU the runtime calls come with the driver's thread id, so torch gives them no
    # parent op: the op that asked is then the innermost one with a stack around the call.
    ops = [e for e in events if e.device_type == DeviceType.CPU and not e.name.startswith("cuda")]
    sites: dict[str, list] = {}
    for event in events:
        if event.device_type != DeviceType.CPU or event.name not in WAITS:
            continue
        took = (event.time_range.end - event.time_range.start) / 1e3
        if "Synchronize" not in event.name and took < 0.1:  # copies that did not wait
            continue
        asker, stack = event, []
        while asker is not None and not stack:  # a runtime call's stack is its aten op's
            stack, asker = list(getattr(asker, "stack", None) or []), getattr(asker, "cpu_parent", None)
        around = sorted((e for e in ops if e.time_range.start <= event.time_range.start
                         and event.time_range.end <= e.time_range.end),
                        key=lambda e: e.time_range.end - e.time_range.start)
        if not stack:
            stack = next((list(e.stack) for e in around if getattr(e, "stack", None)), [])
        outside = [frame for frame in stack[1:] if "/torch/" not in frame and not frame.startswith("<built-in")]
        frames = [_short_frame(frame) for frame in stack[:1] + outside[:3]] or [
            "no Python stack recorded" + (f" (inside {', '.join(e.name for e in around[:3])})" if around else "")]
        site = sites.setdefault(f"{event.name}: " + " < ".join(frames), [0, 0.0])
        site[0] += 1
        site[1] += took
    lines = [f"where the host waited for the GPU (steps {after + 1}-{after + 2}, profiled again with Python "
             f"stacks; innermost frame first): " + ("" if sites else "nowhere")]
    for site, (count, took) in sorted(sites.items(), key=lambda item: -item[1][0])[:shown]:
        lines.append(f"  {count}x, {took:.1f} ms: {site}")
    return lines


def _short_frame(frame: str) -> str:
    """'/x/site-packages/transformers/masking_utils.py(755): f' -> 'transformers/masking_utils.py(755): f'."""
    path, _, rest = frame.partition("(")
    if "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    else:
        path = "/".join(path.split("/")[-2:])
    return f"{path}({rest}" if rest else path


def idle_gaps(kernels: list[tuple[float, float, str]], host: list, shown: int = 8) -> list[str]:
    """Where the GPU had nothing to run: the gaps between its kernels, the largest ones with
    the kernels around them and the host's outermost ops during them (what kept the queue
    empty: a sync, the optimizer's launches, the next batch...). Microseconds in, ms out."""
    segments = merged(kernels)
    gaps = [(after[0] - before[1], before, after) for before, after in zip(segments, segments[1:])]
    if not gaps:
        return []
    origin = segments[0][0]
    outermost = [e for e in host if getattr(e, "cpu_parent", None) is None]
    lines = [f"GPU idle between its kernels: {sum(g[0] for g in gaps) / 1e3:.1f} ms in {len(gaps):,} gaps, "
             f"{sum(g[0] for g in gaps if g[0] >= 1000) / 1e3:.1f} ms of it in gaps of 1 ms or more; the largest:"]
    for length, before, after in sorted(gaps, key=lambda g: -g[0])[:shown]:
        start, end = before[1], after[0]
        during: dict[str, float] = {}
        for event in outermost:
            overlap = min(end, event.time_range.end) - max(start, event.time_range.start)
            if overlap > 0:
                during[event.name] = during.get(event.name, 0.0) + overlap
        ops = ", ".join(f"{name} {time / 1e3:.1f} ms" for name, time in sorted(during.items(), key=lambda i: -i[1])[:4])
        lines.append(f"  {length / 1e3:.1f} ms at {(start - origin) / 1e3:.1f} ms: after {before[2][:60]}, "
                     f"before {after[3][:60]}; host: {ops or 'no op recorded (Python)'}")
    return lines


def merged(intervals: list[tuple[float, float, str]]) -> list[list]:
    """The union of named [start, end) intervals, in order: [start, end, the name of the
    interval that ends it, the name of the one that starts it] per stretch without a gap."""
    segments: list[list] = []
    for start, end, name in sorted(intervals):
        if segments and start <= segments[-1][1]:
            if end > segments[-1][1]:
                segments[-1][1:3] = [end, name]
        else:
            segments.append([start, end, name, name])
    return segments


def covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: time some kernel ran, overlaps once."""
    return sum(end - start for start, end, *_ in merged([(start, end, "") for start, end in intervals]))


def matmul_parameters(model) -> int:
    """Base-model parameters in matmuls: all but LoRA's and the input embedding (a tied
    embedding counts once, as the LM head)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    total = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    return total - (0 if tied else embedding.numel())


def versions() -> dict:
    from importlib import metadata

    import portaft.outputs

    found = portaft.outputs.library_versions()
    for name in ("liger-kernel", "triton"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


# --- results ----------------------------------------------------------------------------


def summarise_runs(record: dict) -> dict:
    """Per path over its rounds: median useful tokens/s (min, max), step time, peak memory, MFU."""
    spec = spec_peak(record.get("gpu")) if record["device"] == "cuda" else None
    measured_peak = record.get("matmul_peak_tflops")
    summary = {}
    for path in PATHS:
        runs = [r for r in record["runs"] if r["path"] == path]
        good = [r for r in runs if "tokens_per_second" in r]
        if not runs:
            continue
        entry: dict = {"rounds": len(runs), "failed": len(runs) - len(good), "batch": (good or runs)[-1]["batch"],
                       "out_of_memory_at": sorted({r["batch"] for r in record.get("out_of_memory", [])
                                                   if r["path"] == path}, reverse=True)}
        problems = [r.get("skipped") or r.get("error") for r in runs if r not in good]
        if problems:
            entry["problem"] = problems[0]
        if good:
            speeds = [r["tokens_per_second"] for r in good]
            median = statistics.median(speeds)
            # model FLOP/s per GPU: forward 2N + backward 2N per token
            flops = median * 4 * good[0]["matmul_parameters"] / record.get("nproc", 1)
            entry.update(tokens_per_second=round(median), min=round(min(speeds)), max=round(max(speeds)),
                         step_seconds=round(statistics.median(r["step_seconds"] for r in good), 3),
                         peak_memory_gib=max((r["peak_memory_gib"] or 0) for r in good) or None,
                         first_losses=good[0]["first_losses"], settings=good[0]["settings"],
                         matmul_parameters=good[0]["matmul_parameters"],
                         mfu_spec=round(flops / spec, 4) if spec else None,
                         mfu_measured=round(flops / (measured_peak * 1e12), 4) if measured_peak else None)
            excess = [e for e in map(busiest_process_excess, good) if e is not None]
            if excess:
                entry["busiest_process_excess"] = round(statistics.median(excess), 4)
        summary[path] = entry
    speed = {p: s.get("tokens_per_second") for p, s in summary.items()}
    for other in ("tuned", "seed"):
        if speed.get("portaft") and speed.get(other):
            summary[f"portaft_over_{other}"] = round(speed["portaft"] / speed[other], 3)
    return summary


def busiest_process_excess(run: dict) -> float | None:
    """Over the measured steps of a run with several processes, how many more tokens the
    busiest process had than the processes' mean, on average (0.05: 5% more). A step waits
    for its busiest process, so this is about what evenly shared steps could gain."""
    ranks = run.get("rank_step_tokens")
    if not ranks:
        return None
    by_step = list(zip(*ranks))
    return statistics.mean(max(by_step[i]) / statistics.mean(by_step[i]) for i in measured_indices(run)) - 1


def spec_peak(gpu: str | None) -> float | None:
    for name, peak in SPEC_PEAK.items():  # "H100 PCIe" before "H100"
        if gpu and name in gpu:
            return peak
    return None


def markdown(records: list[dict]) -> str:
    """One table over every (shape, lengths) record."""
    lines = ["# Training throughput: seed settings, tuned plain HF, portaft", "",
             "Useful (non-pad) tokens per second, median of the rounds (min-max), counted from the batches that "
             "ran, after the warm-up steps and leaving out steps that compiled a graph (listed below each "
             "run); LoRA r=64 on all linear layers; same data and initial weights for "
             "every path, so the losses of step 1 must agree (the seed path's first step holds the first 16 "
             "samples of the others' first batch). MFU = tokens/s x 4 x N / peak (N: parameters in matmuls; "
             "attention left out). Written by `python bench/throughput.py` (see its docstring).", "",
             "| shape | data | path | batch | useful tokens/s | step (s) | peak GiB | MFU (spec) | MFU (matmul) "
             "| loss, steps 1-3 | x seed | x tuned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for record in records:
        summary = record["summary"]
        data = next((r["data"] for r in record["runs"] if "data" in r), None)
        for path in PATHS:
            s = summary.get(path)
            if s is None:
                continue
            cells = [record["shape"], record["lengths"], path, _batch(path, s, record)]
            if "tokens_per_second" not in s:
                problem = s["problem"].splitlines()[0]
                cells += [f"not run: {problem[:150]}{'...' if len(problem) > 150 else ''}"] + [""] * 7
            else:
                cells += [f"{s['tokens_per_second']:,} ({s['min']:,}-{s['max']:,})"
                          + (f", {s['failed']} of {s['rounds']} rounds failed" if s["failed"] else ""),
                          f"{s['step_seconds']:.3f}", _number(s["peak_memory_gib"]), _percent(s["mfu_spec"]),
                          _percent(s["mfu_measured"]), ", ".join(f"{x:.3f}" for x in s["first_losses"]),
                          _ratio(s, summary.get("seed")), _ratio(s, summary.get("tuned"))]
            lines.append("| " + " | ".join(cells) + " |")
        peak = spec_peak(record.get("gpu"))
        notes.append(f"- {record['shape']}, {record['lengths']}: {record.get('gpu') or 'CPU (smoke run)'}, "
                     f"{record['date']}, {record['settings']['rounds']} rounds of {record['settings']['steps']} steps "
                     f"(seed {record['settings']['seed_steps']}), {record['settings']['warmup']} warm-up; "
                     + (f"data {data['samples']} samples, mean {data['mean_tokens']} tokens, "
                        f"{data['truncated']} cut at {record['settings']['max_length']}; " if data else "")
                     + (f"LoRA dropout {lora['dropout']}; " if (lora := record["settings"].get("lora", LORA))
                        ["dropout"] != LORA["dropout"] else "")
                     + (f"a log every {every} steps after the first {FIRST_LOSSES}; " if (
                        every := record["settings"].get("logging_steps", 1)) > 1 else "")
                     + (f"MFU (spec) against {peak / 1e12:.0f} TFLOP/s dense bf16, " if peak else "")
                     + (f"MFU (matmul) against the {record['matmul_peak_tflops']} TFLOP/s a bf16 matmul reached "
                        "on this GPU" + (" (the median of the merged files')" if record.get("merged_from") else "")
                        + "; " if record.get("matmul_peak_tflops") else "")
                     + (f"rounds merged from {len(merged)} runs of the benchmark ("
                        + ", ".join(f"{m['rounds']} on {m['date']}" for m in merged) + "); "
                        if (merged := record.get("merged_from")) else "")
                     + _left_out(record)
                     + "versions: " + ", ".join(f"{k} {v}" for k, v in _versions(record).items()))
    return "\n".join(lines + scaling(records) + ["", "Runs:", ""] + notes) + "\n"


def _left_out(record: dict) -> str:
    """The measured steps left out because they compiled a graph, by path and round."""
    parts = []
    for run in record["runs"]:
        left_out = [n for n in run.get("compiled_steps", ()) if n > run["warmup"]]  # written with the warm-up
        if left_out:
            ms = ", ".join(f"{run['step_ms'][n - 1] / 1e3:.1f} s" for n in left_out)
            parts.append(f"{run['path']} round {run.get('round', 1)} step{'s' * (len(left_out) > 1)} "
                         f"{', '.join(map(str, left_out))} ({ms})")
    return f"left out for compiling: {'; '.join(parts)}; " if parts else ""


def scaling(records: list[dict]) -> list[str]:
    """portaft's tokens/s with N processes over one process's, for the shapes OUT holds both of."""
    def speed(record: dict) -> float | None:
        return record["summary"].get("portaft", {}).get("tokens_per_second")

    lines = []
    for several in (r for r in records if r.get("nproc", 1) > 1 and speed(r)):
        one = next((r for r in records if r.get("nproc", 1) == 1 and speed(r) and r["shape"] == several["shape"]
                    and r["lengths"] == several["lengths"]), None)
        if one is not None:
            lines.append(f"- {several['shape']}, {several['lengths']}: {several['nproc']} processes make "
                         f"{speed(several):,} useful tokens/s, {speed(several) / speed(one):.2f}x one process's "
                         f"{speed(one):,} (ideal {several['nproc']}x)"
                         + (f"; a step's busiest process had {excess:.1%} more tokens than their mean" if (
                             excess := several["summary"]["portaft"].get("busiest_process_excess")) is not None
                            else ""))
    return ["", "Several GPUs (portaft path, `--nproc`):", ""] + lines if lines else []


def _batch(path: str, s: dict, record: dict) -> str:
    if path == "seed":
        return f"{s['batch']} x GA {SEED_ACCUMULATION}, checkpointing"
    gpus = f" x {record['nproc']} processes" if record.get("nproc", 1) > 1 else ""
    settings = s.get("settings", {}) if path == "portaft" else {}
    without, adding = settings.get("without"), settings.get("with")
    text = f"{s['batch']}, padding-free" + (", Liger" if record["device"] == "cuda" else "") if path == "tuned" \
        else str(s["batch"]) + (f", without {' and '.join(without)}" if without else "") \
        + (f", with {' and '.join(adding)}" if adding else "")
    return text + gpus + "".join(f" ({b}: out of memory)" for b in s["out_of_memory_at"])


def _versions(record: dict) -> dict:
    return next((r["versions"] for r in record["runs"] if "versions" in r), {})


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ratio(s: dict, other: dict | None) -> str:
    if not other or "tokens_per_second" not in other or other is s:
        return ""
    return f"{s['tokens_per_second'] / other['tokens_per_second']:.2f}"


# what must agree for rounds of two records to be one table's rounds
SAME_BENCHMARK = ("benchmark", "shape", "lengths", "device", "gpu", "nproc")
SAME_SETTINGS = ("max_length", "steps", "seed_steps", "warmup", "logging_steps", "lora")


def merge(files: list[Path], out: Path) -> Path:
    """One record from rounds of one benchmark run apart (two GPUs of a machine at once, or a
    later call when one would not fit a time limit): the runs of every file in the given order,
    rounds renumbered, the summary computed again. The measured matmul peak is the median of
    the files' (each process measured its own); every file's date and peak are kept."""
    records = []
    for file in files:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(record.get("runs"), list) or "rounds" not in record.get("settings", {}):
                raise KeyError("runs, settings.rounds")  # what a result file of this script holds
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--merge: {file} is not a result file of bench/throughput.py "
                             f"({type(exc).__name__}: {exc}); give its throughput-SHAPE-LENGTHS.json files") from None
        records.append(record)
    first = records[0]
    for file, record in zip(files[1:], records[1:]):
        differs = [k for k in SAME_BENCHMARK if record.get(k) != first.get(k)] + [
            f"settings.{k}" for k in SAME_SETTINGS if record["settings"].get(k) != first["settings"].get(k)]
        if differs:
            raise SystemExit(f"--merge: {file} is not the same benchmark as {files[0]}: "
                             f"{', '.join(differs)} differ; merge only rounds of one benchmark")
    runs, rounds = [], 0
    for record in records:
        runs += [run | {"round": run["round"] + rounds} for run in record["runs"]]
        rounds = max([rounds] + [run["round"] for run in runs])
    peaks = [r["matmul_peak_tflops"] for r in records if r.get("matmul_peak_tflops")]
    merged = first | {"date": max(r["date"] for r in records),
                      "matmul_peak_tflops": statistics.median(peaks) if peaks else None,
                      "settings": first["settings"] | {"rounds": rounds}, "runs": runs,
                      "out_of_memory": [oom for r in records for oom in r.get("out_of_memory", [])],
                      "merged_from": [{"file": f.name, "date": r["date"], "rounds": r["settings"]["rounds"],
                                       "matmul_peak_tflops": r.get("matmul_peak_tflops")}
                                      for f, r in zip(files, records)]}
    merged["summary"] = summarise_runs(merged)
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, result_name(first["shape"], first["lengths"], first["nproc"]), merged)
    return write_summary(out)


def result_name(shape: str, lengths: str, nproc: int) -> str:
    """SHAPE-LENGTHS of the result files; several processes get files of their own."""
    return f"{shape}-{lengths}" + (f"-{nproc}gpus" if nproc > 1 else "")


def write_record(out: Path, name: str, record: dict) -> None:
    """OUT/throughput-NAME.json and its table, .md."""
    (out / f"throughput-{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / f"throughput-{name}.md").write_text(markdown([record]), encoding="utf-8")


def write_summary(out: Path) -> Path:
    """OUT/throughput.md from every OUT/throughput-*.json."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("throughput-*.json"))]
    path = out / "throughput.md"
    path.write_text(markdown(records), encoding="utf-8")
    return path


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
        speed_ups = set(DEFAULT_SPEED_UPS + OPT_IN_SPEED_UPS)
        if set(args.portaft_without + args.portaft_with) - speed_ups:
            parser.error(f"--portaft-without/--portaft-with: choose from {', '.join(sorted(speed_ups))}")
        if args.nproc > 1 and args.paths != ["portaft"]:
            parser.error("--nproc: measures the portaft path only (--paths portaft)")
        unknown = sorted(set(args.paths) - set(PATHS))
        if unknown:
            parser.error(f"--paths: unknown {', '.join(unknown)}; choose from {', '.join(PATHS)}")
        drive(args)


if __name__ == "__main__":
    main()
