"""The probe step of `plan: auto` (issue 28): the activations a token keeps, measured on the device.

execution.py splits the effective batch by an estimate of what autograd keeps per token for a
Llama-style decoder, times a margin of 1.25. On one H100 (7B shape, LoRA r 64, fused loss and
norms) a run kept 2.1-3.4 MB a token where the estimate counts 3.3 MB: splits that fit were
left out. So before the Trainer starts, the probe runs one forward and backward pass, on the
device, of a micro-batch of the longest samples, as the run will train them (the loaded model
with its speed-ups, the run's collator, autocast at the run's precision, no checkpointing), and
reads the device's peak memory. The estimate, scaled by what was measured, then chooses the
split again with a margin of 1.1, since it is measured now. Checkpointing changes only from on
to off (the speed-ups were chosen for the planned split): where the probe shows that a
micro-batch at least the recipe's fits without it.

Nothing else of the run changes: the random number generators are put back (so dropout in the
probe draws nothing training would), its gradients are dropped, the model's train/eval mode
is restored, and compiled layers run eagerly in it (they compile in the first step, as before).
Out of memory in the probe, or any other failure of it, keeps the estimate's split, and the
record says why. Not taken under FSDP or DeepSpeed (the model is not sharded yet), where the
weights are not on the device yet, nor on a device whose memory torch does not count (its
module has no `max_memory_allocated`). Checked on the CPU (tests); not yet run on a GPU.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

from portaft.engines import shards
from portaft.errors import first_line

from .execution import GIB, Execution, across_processes, apply_execution, bytes_off, free_device_memory

PROBED_MARGIN = 1.1  # on measured activations: allocator rounding, batches a little unlike the probe's


class DeviceMeter:
    """The device's peak of allocated memory during the `with` block, above what was allocated when
    it began (torch.cuda / torch.npu: memory_allocated, reset_peak_memory_stats, max_memory_allocated)."""

    def __init__(self, module: Any, device: Any) -> None:
        self.module, self.device, self.bytes = module, device, 0

    def __enter__(self) -> "DeviceMeter":
        self.module.synchronize(self.device)
        self.before = self.module.memory_allocated(self.device)
        self.module.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.module.synchronize(self.device)
        self.bytes = max(0, self.module.max_memory_allocated(self.device) - self.before)


def meter_for(device: Any, model: Any) -> Any:
    """A meter of what a pass of `model` holds on `device`: a DeviceMeter where torch counts the
    device's memory, else None (no probe)."""
    import torch

    module = getattr(torch, device.type, None)
    needs = ("memory_allocated", "reset_peak_memory_stats", "max_memory_allocated", "synchronize")
    if device.type == "cpu" or module is None or not all(hasattr(module, name) for name in needs):
        return None
    return DeviceMeter(module, device)


def why_not(execution: Execution, model: Any, args: Any, recipe: Any, processes: int, meter: Any) -> str | None:
    if execution.mode != "auto" or execution.memory is None:
        return "the split was not planned from memory"
    if meter is None:
        return f"torch does not count the {args.device.type} device's memory"
    if shards.of(recipe, processes).engine:
        return "FSDP or DeepSpeed shard the model when training starts"
    if bytes_off(model, args.device):
        return "the weights are not on the device yet"
    return None


def probe_and_replan(execution: Execution, model: Any, collator: Any, dataset: Any, lengths: list[int],
                     args: Any, recipe: Any, processes: int, meter: Any) -> bool:
    """Measure, then choose the split again; True where it changed (set on args and the recipe)."""
    reason = why_not(execution, model, args, recipe, processes, meter)
    if reason is not None:
        execution.probe = {"measured": False, "why": reason}
        return False
    micro = 1 if execution.checkpointing else execution.micro_batch
    longest = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)[:micro]
    batch = collator([dataset[index] for index in longest])
    tokens = int(batch["input_ids"].numel())
    started = time.perf_counter()
    kept, failed = None, ""
    try:
        kept = activation_bytes(model, batch, args, meter)
    except Exception as exc:  # noqa: BLE001 (a probe that fails leaves the estimate's split, said in the record)
        failed = f"out of memory at {tokens} tokens without checkpointing" if _out_of_memory(exc) else (
            f"it failed ({type(exc).__name__}: {first_line(exc)}); the estimate's split is kept")
    if kept is None:  # what the failed pass held is free once its exception is gone
        free_device_memory(args.device)
    # every process reaches this, so that each plans with the largest measure (inf: one could not measure)
    per_token = across_processes(math.inf if kept is None else kept / tokens, args.device, processes, "MAX")
    if per_token == math.inf:
        execution.probe = {"measured": False, "why": failed or "another process could not measure"}
        return False
    memory = execution.memory
    estimated = memory.per_token(False)
    memory.scale, memory.margin = per_token / estimated, PROBED_MARGIN
    execution.probe = {"measured": True, "tokens": tokens, "seconds": round(time.perf_counter() - started, 2),
                       "kept_mb_per_token": round(per_token / 1e6, 3), "estimated_mb_per_token": round(
                           estimated / 1e6, 3)}
    return _choose_again(execution, args, recipe, model)


def activation_bytes(model: Any, batch: dict, args: Any, meter: Any) -> int:
    """The activations one forward and backward pass of `batch` held, as `meter` measures them."""
    import torch

    device = args.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in trainable]
    # the gradients exist before the meter starts (the memory model counts them apart, and a peak
    # reached before the backward pass made them would otherwise hide them); the pass adds into them
    for parameter in trainable:
        parameter.grad = torch.zeros_like(parameter)
    batch = {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}
    training = model.training
    if device.type == "cpu":  # the CPU's generator is always forked
        devices = []
    else:
        devices = [device.index if device.index is not None else getattr(torch, device.type).current_device()]
    eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type), eager, meter:
            model.train()
            with _autocast(args):
                loss = model(**batch).loss
            loss.backward()
            del loss
    finally:
        for parameter, grad in zip(trainable, grads):
            parameter.grad = grad
        model.train(training)
    return meter.bytes


def _autocast(args: Any) -> Any:
    """The Trainer's mixed precision (accelerate's autocast for bf16 / fp16)."""
    import torch

    dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None
    return torch.autocast(args.device.type, dtype=dtype) if dtype is not None else nullcontext()


def _choose_again(execution: Execution, args: Any, recipe: Any, model: Any) -> bool:
    memory = execution.memory
    effective = execution.micro_batch * execution.accumulation
    divisors = [m for m in range(effective, 0, -1) if effective % m == 0]
    fits = [m for m in divisors if memory.peak(m, False) <= memory.budget]
    written = min(execution.written["micro_batch"], effective)
    if execution.checkpointing:
        fits = [m for m in fits if m >= written]
    if not fits:  # the estimate's split stays; the first step's out-of-memory retry is behind it
        execution.why += "; the probe step's measure fits no larger split"
        return False
    micro = fits[0]
    was_checkpointing = execution.checkpointing
    changed = (micro, False) != (execution.micro_batch, execution.checkpointing)
    execution.micro_batch, execution.accumulation, execution.checkpointing = micro, effective // micro, False
    execution.predicted_peak_gib = round(memory.peak(micro, False) / GIB, 2)
    probe = execution.probe
    execution.why = (f"the largest micro-batch of the {effective} samples a step that fits {memory.budget / GIB:.1f} "
                     f"GiB free without gradient checkpointing, by the probe step's measure (longest sample "
                     f"{memory.longest} tokens; {probe['kept_mb_per_token']} MB kept a token, measured on "
                     f"{probe['tokens']} tokens, where the estimate counts {probe['estimated_mb_per_token']})")
    if changed:
        apply_execution(execution, args, recipe, model)
        if was_checkpointing and hasattr(model, "disable_input_require_grads"):
            try:  # planned with checkpointing, the embedding's output was made to carry gradients
                model.disable_input_require_grads()
            except AttributeError:  # no hook was set
                pass
    return changed


def _out_of_memory(exc: Exception) -> bool:
    return "out of memory" in str(exc).lower() or "OutOfMemory" in type(exc).__name__
