"""What each process of a sharding engine keeps on its device: the divisors `plan: auto`'s
memory model applies (issue 28's plan, issue 31's "divides by the shard group").

FSDP full_shard and ZeRO-3 split the weights, their gradients and the optimizer state over
the processes; FSDP shard_grad_op and ZeRO-2 keep the weights whole and split the rest;
ZeRO-1 splits only the optimizer state. An engine that offloads to the CPU keeps what it
offloads off the device (divisor None). While a weight-sharding engine computes, it gathers
one FSDP unit (a decoder layer) at a time and prefetches the next: two layers' weights
whole on every process, counted by `gathered_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import deepspeed, fsdp


@dataclass(frozen=True)
class Shards:
    """How many ways each part is split (None: kept in CPU memory, not on the device)."""

    engine: str  # "" without an engine
    weights: int | None = 1
    gradients: int | None = 1
    optimizer: int | None = 1
    gathered_layers: int = 0  # decoder layers held whole while they compute

    def on_device(self, part_bytes: float, divisor: int | None) -> float:
        return 0.0 if divisor is None else part_bytes / divisor


def of(recipe: Any, processes: int) -> Shards:
    """The split the effective recipe's engine makes over `processes` (its shard group: every
    process; hybrid sharding is not modelled and counts as unsplit)."""
    train = recipe.train
    n = max(1, processes)
    if fsdp.asked(train):
        config = fsdp.completed_config(train)
        if config.get("cpu_offload"):
            return Shards("FSDP (CPU offload)", None, None, None, gathered_layers=2)
        if config.get("reshard_after_forward", True) is False:  # shard_grad_op
            return Shards("FSDP shard_grad_op", 1, n, n)
        return Shards("FSDP full_shard", n, n, n, gathered_layers=2)
    stage = deepspeed.stage(train)
    if stage is None:
        return Shards("")
    zero = (deepspeed.config(train) or {}).get("zero_optimization") or {}
    optimizer = None if _offloaded(zero.get("offload_optimizer")) else n
    if stage >= 3:
        weights = None if _offloaded(zero.get("offload_param")) else n
        return Shards(f"DeepSpeed ZeRO-{stage}", weights, n, optimizer, gathered_layers=2)
    if stage == 2:
        return Shards("DeepSpeed ZeRO-2", 1, n, optimizer)
    return Shards(f"DeepSpeed ZeRO-{stage}", 1, 1, optimizer if stage == 1 else 1)


def _offloaded(section: Any) -> bool:
    return isinstance(section, dict) and section.get("device") in ("cpu", "nvme")


def rederive_deepspeed_config(args: Any) -> None:
    """transformers fills a DeepSpeed config's "auto" batch values from the TrainingArguments
    when they are made (TrainingArguments.__post_init__): after the plan changed the split,
    the same three steps again, from the recipe's own config, so DeepSpeed's batch sizes
    agree with the Trainer's."""
    if not getattr(args, "deepspeed", None) or getattr(args, "hf_deepspeed_config", None) is None:
        return
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args.hf_deepspeed_config = HfTrainerDeepSpeedConfig(args.deepspeed)
    args.hf_deepspeed_config.trainer_config_process(args)
    args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=args.hf_deepspeed_config)
