"""How the effective batch is computed on this device: `plan: auto` (issue 28).

A recipe says what to compute: per_device_train_batch_size x gradient_accumulation_steps
samples per process and optimizer step. transformers normalises the loss over the tokens
of the whole accumulated batch (num_items_in_batch), and its sampler hands out the same
samples in the same order whatever the micro-batch, so a micro-batch m with accumulation
E / m trains the same samples in every optimizer step, with the same loss, as the recipe's
split of E. Under `plan: auto` portaft picks that split and gradient checkpointing from a
memory model of the device: the largest micro-batch (a divisor of E) that fits without
checkpointing, at least the recipe's own; else the largest that fits with it. `as_written`,
a device that does not say how much memory it has (the CPU), and packed batches (their
token budget is the recipe's) keep the recipe's split. Under FSDP, whose activation
checkpointing is its own setting, the plan keeps that setting and chooses the micro-batch.

The memory model counts, on top of what is already on the device once the model loaded:
the weights still to move there, the trainable weights' gradients and AdamW's two moments
(each divided as FSDP or DeepSpeed ZeRO splits it over the processes: engines/shards.py),
and the activations autograd
keeps per token (every layer's, or with checkpointing each layer's input plus one layer
recomputed), with the logits unless the loss is fused, for the longest sample times the
micro-batch (a padded batch is as long as its longest sample). The figures per token are
estimates for a Llama-style decoder (see `activation_bytes`), times SAFETY; the predicted
and the measured peak both go to portaft_run.json, so the model can be checked run by run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from portaft.compat import checkpointing as asks_for_checkpointing
from portaft.compat import set_checkpointing
from portaft.engines import fsdp, shards
from portaft.errors import UserError

SAFETY = 1.25  # on the activation estimate: allocator rounding, temporaries the count leaves out
HEADROOM_GIB = 2.0  # kept free: CUDA/NCCL workspaces, the allocator's fragmentation
GIB = 2**30
LIMIT_ENV = "PORTAFT_DEVICE_MEMORY_GIB"  # plan for (and hold this process to) a device this large


@dataclass
class Execution:
    """The chosen split of the effective batch, and why; written to portaft_run.json under `plan`."""

    mode: str  # auto | as_written
    micro_batch: int
    accumulation: int
    checkpointing: bool
    written: dict  # the recipe's own micro_batch, accumulation, checkpointing
    why: str
    budget_gib: float | None = None  # memory free for training once the model is loaded
    predicted_peak_gib: float | None = None  # above what was on the device when planned (weights still to come included)
    retries: list[str] = field(default_factory=list)
    probe: dict | None = None  # the probe step's measure (probe.py), or why none was taken
    memory: "MemoryModel | None" = field(default=None, repr=False)  # what chose the split; not recorded

    @property
    def changed(self) -> bool:
        return (self.micro_batch, self.accumulation, self.checkpointing) != (
            self.written["micro_batch"], self.written["accumulation"], self.written["checkpointing"])

    def record(self) -> dict:
        record = asdict(replace(self, memory=None))
        del record["memory"]
        return record


@dataclass
class MemoryModel:
    """The peak a split is expected to reach on the device: what stays there whatever the split
    (`fixed`), plus the activations of a micro-batch of its longest samples, times a margin.
    `scale` is what the probe step measured over what ModelFacts estimates (1 before it ran)."""

    facts: "ModelFacts"
    fixed: float
    longest: int
    fused_loss: bool
    fused_layers: bool
    fsdp_own: bool | None  # FSDP's own activation checkpointing, which the plan keeps; None: not FSDP's
    budget: float
    scale: float = 1.0
    margin: float = SAFETY

    def per_token(self, checkpointing: bool) -> float:
        checkpointing = checkpointing if self.fsdp_own is None else self.fsdp_own
        return self.scale * self.facts.activation_bytes(checkpointing, self.fused_loss, self.fused_layers)

    def peak(self, micro: int, checkpointing: bool) -> float:
        return self.fixed + self.margin * micro * self.longest * self.per_token(checkpointing)


def written_split(recipe: Any) -> dict:
    train = recipe.train
    return {"micro_batch": int(train.get("per_device_train_batch_size", 8)),
            "accumulation": int(train.get("gradient_accumulation_steps", 1)),
            "checkpointing": asks_for_checkpointing(train)}


def plan_execution(recipe: Any, args: Any, model: Any, lengths: list[int], processes: int,
                   fused_loss: bool, fused_layers: bool = False) -> Execution:
    written = written_split(recipe)
    keep = Execution(recipe.plan, written["micro_batch"], written["accumulation"], written["checkpointing"], written,
                     why="")
    if recipe.plan == "as_written":
        keep.why = "plan: as_written"
        return keep
    if recipe.packing:
        keep.why = "packed batches: their token budget is the recipe's (packing_tokens)"
        return keep
    if not normalises_over_the_step():
        keep.why = ("this transformers averages each micro-batch's loss (num_items_in_batch came in 4.46), so "
                    "another split would change the loss")
        return keep
    budget = memory_budget(args.device, processes)
    if budget is None:
        keep.why = f"the {args.device.type} device does not say how much memory it has"
        return keep
    facts = ModelFacts.of(model)
    longest = max(lengths) if lengths else 1
    effective = written["micro_batch"] * written["accumulation"]
    # the Trainer (or the engine) moves a model loaded on the host to the device when it starts: its weights are
    # still to come, split over the shard group by FSDP / ZeRO-3
    split = shards.of(recipe, processes)
    fixed = facts.device_state_bytes(split, bytes_off(model, args.device))
    # FSDP checkpoints through its own setting (engines/fsdp.py moved the recipe's there): kept as it is, since
    # gradient_checkpointing beside FSDP gathers every layer's weights once more
    fsdp_own = fsdp.own_checkpointing(recipe.train)
    memory = MemoryModel(facts, fixed, longest, fused_loss, fused_layers, fsdp_own, budget)
    choice = _choose(effective, written["micro_batch"], budget, memory.peak, may_checkpoint=fsdp_own is None)
    engine = f"; {split.engine} over {max(1, processes)} process(es) counted" if split.engine else ""
    if choice is None:  # nothing fits by the estimate: the recipe as written, and the OOM retry after it
        micro, checkpointing = written["micro_batch"], written["checkpointing"]
        why = (f"no split of the {effective} samples a step fits the {budget / GIB:.1f} GiB free by the estimate"
               f"{engine}; kept as written")
    else:
        micro, checkpointing = choice
        how = (f"with FSDP's own activation checkpointing {'on' if fsdp_own else 'off'} (kept)" if fsdp_own is not None
               else f"{'with' if checkpointing else 'without'} gradient checkpointing")
        why = (f"the largest micro-batch of the {effective} samples a step that fits {budget / GIB:.1f} GiB free "
               f"{how} (longest sample {longest} tokens{engine})")
    return Execution("auto", micro, effective // micro, checkpointing, written, why, round(budget / GIB, 2),
                     round(memory.peak(micro, checkpointing) / GIB, 2), memory=memory)


def _choose(effective: int, written_micro: int, budget: float, peak: Any,
            may_checkpoint: bool = True) -> tuple[int, bool] | None:
    """Without checkpointing at a micro-batch at least the recipe's (it recomputes every layer:
    about a third more compute); else the largest micro-batch that fits with it. Where the
    checkpointing is not the plan's to choose (FSDP's own), the largest micro-batch that fits."""
    divisors = [m for m in range(effective, 0, -1) if effective % m == 0]
    if not may_checkpoint:
        return next(((m, False) for m in divisors if peak(m, False) <= budget), None)
    for micro in divisors:
        if micro >= min(written_micro, effective) and peak(micro, False) <= budget:
            return micro, False
    for micro in divisors:
        if peak(micro, True) <= budget:
            return micro, True
    return None


def apply_execution(execution: Execution, args: Any, recipe: Any, model: Any) -> list[str]:
    """Set the chosen split on the TrainingArguments and the effective recipe; the plan's note."""
    if not execution.changed:
        return describe(execution)
    args.per_device_train_batch_size = execution.micro_batch
    args.gradient_accumulation_steps = execution.accumulation
    recipe.train.update(per_device_train_batch_size=execution.micro_batch,
                        gradient_accumulation_steps=execution.accumulation)
    set_checkpointing(recipe.train, args, execution.checkpointing)
    shards.rederive_deepspeed_config(args)
    if execution.checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # a frozen embedding's output must carry gradients through checkpoints
    return describe(execution)


def describe(execution: Execution) -> list[str]:
    """The plan's note: the split, and why."""
    if not execution.changed:
        return [f"plan {execution.mode}: micro-batch {execution.micro_batch} x accumulation "
                f"{execution.accumulation}, gradient checkpointing {'on' if execution.checkpointing else 'off'}, as "
                f"written ({execution.why})"]
    w = execution.written
    predicted = f"; predicted peak {execution.predicted_peak_gib} GiB" \
        if execution.predicted_peak_gib is not None else ""
    return [f"plan auto: micro-batch {w['micro_batch']} x accumulation {w['accumulation']} -> "
            f"{execution.micro_batch} x {execution.accumulation}, gradient checkpointing "
            f"{'on' if w['checkpointing'] else 'off'} -> {'on' if execution.checkpointing else 'off'}: "
            f"{execution.why}{predicted}. The same samples and loss in every optimizer step; "
            "plan: as_written runs the recipe's split"]


def smaller(execution: Execution, args: Any, recipe: Any, model: Any, error: str) -> list[str]:
    """After an out-of-memory error in the first optimizer step: half the micro-batch (then
    checkpointing on), the same effective batch."""
    effective = execution.micro_batch * execution.accumulation
    if execution.micro_batch > 1 and effective % (execution.micro_batch // 2) == 0:
        execution.micro_batch //= 2
    elif not execution.checkpointing:
        execution.checkpointing = True
    else:
        raise UserError(f"out of device memory at micro-batch 1 with gradient checkpointing ({error}). Lower "
                        "max_length, use quantization (QLoRA) or a device with more memory.")
    execution.accumulation = effective // execution.micro_batch
    execution.retries.append(error)
    note = apply_execution(execution, args, recipe, model)[0]
    return [f"out of device memory in the first step ({error}): trying once more. {note}"]


def normalises_over_the_step() -> bool:
    """transformers >= 4.46 divides the loss by the tokens of the whole accumulated step."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version("4.46")


def bytes_off(model: Any, device: Any) -> int:
    """Bytes of the model's weights and buffers not on `device` yet."""
    tensors = [*model.parameters(), *model.buffers()] if hasattr(model, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != device.type)


def memory_budget(device: Any, processes: int) -> float | None:
    """Bytes free on this process's device now (the model loaded), held to $PORTAFT_DEVICE_MEMORY_GIB
    if set; the least of all processes', which must split their batches alike."""
    import torch

    module = getattr(torch, device.type, None)
    if device.type == "cpu" or module is None or not hasattr(module, "mem_get_info"):
        return None
    free, total = module.mem_get_info(device)
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        cap = float(limit) * GIB
        if hasattr(module, "set_per_process_memory_fraction"):
            module.set_per_process_memory_fraction(min(1.0, cap / total), device)
        free = min(free, cap - module.memory_allocated(device))
    return across_processes(free - HEADROOM_GIB * GIB, device, processes, "MIN")


def across_processes(value: float, device: Any, processes: int, op: str) -> float:
    """`value` reduced over every process (op: "MIN" or "MAX" of torch.distributed.ReduceOp): each
    process must split its batches alike, so each plans from the same figure."""
    import torch

    if processes <= 1 or not torch.distributed.is_initialized():
        return value
    shared = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(shared, op=getattr(torch.distributed.ReduceOp, op))
    return float(shared.item())


def free_device_memory(device: Any) -> None:
    """What failed work left collectable given back, and the device's cached blocks with it
    (torch.cuda, torch.npu...: the module named by the device's type)."""
    import gc

    import torch

    gc.collect()
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "empty_cache"):
        module.empty_cache()


@dataclass
class ModelFacts:
    """What the memory model reads from the loaded model."""

    hidden: int
    kv_hidden: int
    ffn: int
    layers: int
    vocab: int
    dtype_bytes: int
    trainable_bytes: int
    lora_rank: int

    @classmethod
    def of(cls, model: Any) -> "ModelFacts":
        config = getattr(model, "config", None)
        get = (lambda name, default: getattr(config, name, None) or default)
        hidden = get("hidden_size", 4096)
        heads = get("num_attention_heads", 32)
        kv_heads = get("num_key_value_heads", heads)
        trainable = [p for p in model.parameters() if p.requires_grad]
        floating = next((p for p in model.parameters() if p.is_floating_point()), None)
        ranks = [getattr(m, "r", {}) for m in model.modules() if isinstance(getattr(m, "r", None), dict)]
        rank = max((max(r.values()) for r in ranks if r), default=0)
        return cls(hidden, hidden * kv_heads // heads, get("intermediate_size", 4 * hidden),
                   get("num_hidden_layers", 32), get("vocab_size", 32000),
                   floating.element_size() if floating is not None else 4,
                   sum(p.numel() * p.element_size() for p in trainable), rank)

    def device_state_bytes(self, split: shards.Shards, weights_to_come: float) -> float:
        """What stays on each process's device besides activations: the weights not there yet,
        gradients and AdamW's two moments, each divided as the engine splits it, plus the
        decoder layers a weight-sharding engine holds whole while they compute."""
        layer = weights_to_come / max(1, self.layers)
        return (split.on_device(weights_to_come, split.weights) + split.gathered_layers * layer
                + split.on_device(self.trainable_bytes, split.gradients)
                + split.on_device(2 * self.trainable_bytes, split.optimizer))

    def activation_bytes(self, checkpointing: bool, fused_loss: bool, fused_layers: bool = False) -> float:
        """Bytes autograd keeps per token. One Llama-style layer keeps: the two RMSNorms' input,
        float32 normalised copy and output ((4b + 8) h); q, k, v for RoPE and attention
        (b (2h + 3 kv)); attention's output (b h); the MLP's gate, up, activation and product
        (4 b ffn); LoRA's rank-r intermediates (7 b r). Fused norms and SwiGLU (Liger's, or
        compiled layers') keep only the norms' input (2 b h) and the MLP's gate and up
        (2 b ffn). With checkpointing each layer keeps only its input (b h) and one layer is
        recomputed at a time. The logits: b + 4 + 4 bytes a vocabulary entry (the logits,
        their float32 copy, the softmax's gradient), none with a fused loss.

        Checked on one H100 with the 7B shape (LoRA r 64, bf16, fused loss and norms, 8 samples
        a micro-batch, no checkpointing): 31.2 GiB peak, so about 17.5 GiB of activations for
        at most 8 x 1,024 tokens: 2.1-3.4 MB a token against the 3.3 MB counted here."""
        b, h = self.dtype_bytes, self.hidden
        if fused_layers:
            norms_and_mlp = 2 * b * h + 2 * b * self.ffn
        else:
            norms_and_mlp = (4 * b + 8) * h + 4 * b * self.ffn
        layer = norms_and_mlp + b * (2 * h + 3 * self.kv_hidden) + b * h + 7 * b * self.lora_rank
        kept = (self.layers * b * h + layer) if checkpointing else self.layers * layer
        logits = 0 if fused_loss else self.vocab * (b + 8)
        return kept + logits
