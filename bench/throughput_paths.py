"""The worker of the throughput benchmark: what one (path, round) process runs.

`prepare` builds the model folder once and measures the GPU's bf16 matmul peak;
`run_path` trains one path under the step meter (bench/throughput_meter.py) and returns
what it measured, the data step's counts and the library versions: `run_seed` (the seed
tutorial's settings) and `run_tuned` (plain transformers at its best), both through
`_train_plain`, and `run_portaft` (`portaft.run` of the recipe `portaft_recipe` writes,
the meter added through the `register_callbacks` plugin hook). bench/throughput.py's
driver starts each such process (`--prepare`, `--worker`) from its --work folder.
"""

from __future__ import annotations

import types
from pathlib import Path

from throughput_meter import make_meter  # bench/throughput_meter.py
from throughput_settings import LEARNING_RATE, LORA, SEED, SEED_ACCUMULATION  # bench/throughput_settings.py


def portaft_recipe(config: dict, batch: int) -> dict:
    """The recipe a user writes for this run: model, data, template, LoRA, a few train: keys."""
    accelerator = config["device"] != "cpu"  # cuda or npu: the backend of that name, mixed precision
    output_dir = Path(config["work"]) / "runs" / f"portaft-{config['shape']}-{config['lengths']}"
    return {"backend": config["device"],
            "model": {"name_or_path": config["model"]},
            "data": [{"path": config["data"]}],
            "template": "deepseek",
            "max_length": config["max_length"],
            "lora": config.get("lora", LORA),
            "train": {"output_dir": str(output_dir), "per_device_train_batch_size": batch,
                      "learning_rate": LEARNING_RATE, "bf16": accelerator, "max_steps": config["steps"],
                      "logging_steps": config.get("logging_steps", 1),
                      "save_strategy": "no", "report_to": "none"},
            "plan": "as_written"}  # steady-state tokens/s: the batch as given, layers compiled however short the run


def recipe_path(config: dict, batch: int) -> Path:
    return Path(config["work"]) / f"recipe-{config['shape']}-{config['lengths']}-batch{batch}.yaml"


def choose_device(asked: str) -> str:
    """--device: cuda, npu or cpu; auto is cuda where a GPU is visible, else cpu. npu imports
    torch_npu through portaft (the platform's settings first) and must see an NPU."""
    import torch

    if asked == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if asked == "npu":
        from portaft.backends.npu import NpuBackend

        reason = NpuBackend().unavailable_reason()
        if reason:
            raise SystemExit(f"--device npu: {reason}")
    elif asked == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return asked


def prepare(config: dict) -> dict:
    """The model folder (built once), the device, and its measured bf16 matmul peak."""
    import torch

    folder = Path.cwd() / "models" / config["shape"]
    if config["shape"] == "tiny":
        from portaft.testing import build_tiny_model

        build_tiny_model(folder)
    else:
        from models import build_model  # bench/models.py

        build_model(folder, config["shape"])
    device = choose_device(config.get("device_asked", "auto"))
    accelerator = getattr(torch, device) if device != "cpu" else None
    return {"model": str(folder), "device": device,
            "gpu": accelerator.get_device_name() if accelerator else None,
            "matmul_peak_tflops": round(matmul_peak(device) / 1e12, 1) if accelerator else None}


def matmul_peak(device: str = "cuda") -> float:
    """The best bf16 matmul FLOP/s of this GPU (or NPU) over a few large square sizes."""
    import torch

    accelerator = getattr(torch, device)
    best = 0.0
    for size in (4096, 8192, 16384):
        a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        start, end = accelerator.Event(enable_timing=True), accelerator.Event(enable_timing=True)
        repeats = max(5, int(2e13 / (2 * size**3)))
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        accelerator.synchronize()
        best = max(best, 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3))
        del a, b
    return best


class Skipped(Exception):
    """This path cannot run with the installed libraries (the reason is recorded)."""


def run_path(path: str, config: dict, batch: int) -> dict:
    import torch

    device = config["device"]
    if device == "npu":  # the worker is a fresh process: torch_npu with the platform's settings first
        from portaft.backends.npu_platform import import_torch_npu

        import_torch_npu()
    meter = make_meter(config["warmup"], device, f"{config['profile']}-{path}.txt" if config.get("profile") else None)
    record: dict = {"versions": versions(),
                    "gpu": getattr(torch, device).get_device_name() if device != "cpu" else None}
    try:
        run = {"seed": run_seed, "tuned": run_tuned, "portaft": run_portaft}[path]
        record["settings"] = run(config, batch, meter, device)
    except Skipped as exc:
        return {**record, "skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 (recorded: the other paths still run)
        import traceback

        traceback.print_exc()
        return {**record, "error": f"{type(exc).__name__}: {exc}"[:1500]}
    record.update(meter.results())
    record["data"] = data_report(config)
    return record


def run_seed(config: dict, batch: int, meter, device: str) -> dict:
    _train_plain(config, meter, device, steps=config["seed_steps"], batch=batch, accumulation=SEED_ACCUMULATION,
                 checkpointing=True, flatten=False, liger=False, optim="adamw_torch")
    return {"gradient_accumulation_steps": SEED_ACCUMULATION, "gradient_checkpointing": True,
            "collator": "DataCollatorForSeq2Seq (padded)", "optim": "adamw_torch"}


def run_tuned(config: dict, batch: int, meter, device: str) -> dict:
    from portaft.data.packing import packing_supported

    reason = packing_supported()
    if reason:  # flattened samples under sdpa would attend to each other: a wrong model, not a speed
        raise Skipped(reason)
    liger = device == "cuda"  # Liger's Triton kernels: CUDA only
    if liger:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            raise RuntimeError("liger-kernel is not installed: pip install liger-kernel (the tuned path uses it)")
    _train_plain(config, meter, device, steps=config["steps"], batch=batch, accumulation=1, checkpointing=False,
                 flatten=True, liger=liger, optim=None)
    return {"gradient_accumulation_steps": 1, "gradient_checkpointing": False,
            "collator": "DataCollatorWithFlattening (padding-free)", "liger_kernel": liger}


def _train_plain(config: dict, meter, device: str, *, steps: int, batch: int, accumulation: int, checkpointing: bool,
                 flatten: bool, liger: bool, optim: str | None) -> None:
    """Trainer + peft as a plain transformers script, on the rows of portaft's data step."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,
                              DataCollatorWithFlattening, Trainer, TrainingArguments, set_seed)

    from portaft.compat import model_dtype_kwargs, trainer_kwargs

    accelerator = device != "cpu"
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    dataset = _portaft_rows(config, tokenizer).dataset
    set_seed(SEED)  # before the model, as portaft does: the same LoRA initial weights
    model = AutoModelForCausalLM.from_pretrained(config["model"],
                                                 **model_dtype_kwargs(torch.bfloat16 if accelerator else torch.float32))
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
        gradient_accumulation_steps=accumulation, gradient_checkpointing=checkpointing, bf16=accelerator,
        use_cpu=not accelerator,
        learning_rate=LEARNING_RATE, max_steps=steps, logging_steps=config.get("logging_steps", 1),
        save_strategy="no", report_to="none", remove_unused_columns=False, seed=SEED, **extra)
    data_collator = (DataCollatorWithFlattening() if flatten
                     else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=data_collator, callbacks=[meter],
                      **trainer_kwargs(Trainer, tokenizer))
    trainer.train()


def run_portaft(config: dict, batch: int, meter, device: str) -> dict:
    import portaft
    from portaft.plugins import get_plugins

    @portaft.hookimpl
    def register_callbacks(register):  # the plugin hook is how the meter gets into portaft's Trainer
        register(meter)

    get_plugins().register(types.SimpleNamespace(register_callbacks=register_callbacks), name="throughput-meter")
    without, adding = config.get("portaft_without") or [], config.get("portaft_with") or []
    if without or adding:  # an ablation: the backend with speed-ups left out or added (the same recipe)
        from portaft.backends.cuda import CudaBackend
        from portaft.backends.npu import NpuBackend

        backend = NpuBackend if device == "npu" else CudaBackend
        offered = [s for s in backend.SPEED_UPS if s.NAME not in without and s.NAME not in adding]
        backend.SPEED_UPS = (*offered, *(_added_speed_up(name) for name in adding))
    recipe = recipe_path(config, batch)  # the driver has emptied its output_dir
    portaft.run(recipe)
    return {"recipe": str(recipe), "without": without, "with": adding}


def _added_speed_up(name: str):
    """The speed-up module `name`, last in the list (after those it may depend on); one that
    applies only under several processes applies with one too."""
    import importlib

    module = importlib.import_module(f"portaft.speed_ups.{name}")
    if name != "attention_without_masks":
        return module
    return types.SimpleNamespace(NAME=module.NAME, STAGE=module.STAGE, apply=module.apply,
                                 applies=lambda training: None if "varlen_attention" in training.applied
                                 else "it serves varlen_attention, which this run does not use")


def _portaft_rows(config: dict, tokenizer):
    import portaft.data
    from portaft.plugins import get_plugins

    portaft.data.prepare_tokenizer(tokenizer)
    plugins = get_plugins()  # the batch changes no row
    return portaft.data.build(plugins.read_recipe(portaft_recipe(config, 1)), tokenizer, plugins)


def data_report(config: dict) -> dict:
    """What the data step made of the synthetic set (the same for every path)."""
    from transformers import AutoTokenizer

    built = _portaft_rows(config, AutoTokenizer.from_pretrained(config["model"]))
    report = built.reports[0]
    return {"samples": report.samples, "tokens": report.tokens, "trained_tokens": report.trained_tokens,
            "mean_tokens": round(report.tokens / report.samples, 1), "shortest": min(built.lengths),
            "longest": max(built.lengths), "truncated": report.truncated}


def versions() -> dict:
    from importlib import metadata

    import portaft.runner.outputs

    found = portaft.runner.outputs.library_versions()
    for name in ("liger-kernel", "triton"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
