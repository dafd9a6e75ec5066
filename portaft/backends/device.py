"""What a device is, as far as a run needs to know: a small value, not a policy.

Speed-ups are not device facts: a backend offers them as a list (portaft/speed_ups/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

NO_BITSANDBYTES = "portaft runs bitsandbytes only on CUDA GPUs"
NO_FLASH_ATTN = "flash-attn's kernels run only on CUDA GPUs"
# accelerate (1.16) sets up FSDP only on accelerators: on the CPU it wraps the model in DDP and
# drops the setting, and forced into FSDP2 there it trains, then fails in save_model
NO_FSDP_ON_CPU = ("FSDP does not run on the CPU here: accelerate would train plain DDP under the sharding key, "
                  "unsharded, and portaft never does that silently")
NO_DEEPSPEED_ON_CPU = "portaft runs DeepSpeed on CUDA GPUs and Ascend NPUs, not on the CPU"


@dataclass(frozen=True)
class Device:
    type: str  # the torch device type: cpu, cuda, npu, mps, ...
    bf16: bool  # trains in bfloat16 mixed precision
    fp16: bool  # trains in float16 mixed precision (autocast with loss scaling)
    fused_optimizer: str | None  # TrainingArguments `optim` of this device's fused AdamW; None: it has none
    collectives: str  # torch.distributed backend between its processes: gloo, nccl, hccl
    # what it cannot do, and why: "quantization" (bitsandbytes' 4/8-bit layers), "flash_attention_2",
    # "fsdp", "deepspeed" (the engines of train.fsdp / train.deepspeed)
    cannot: Mapping[str, str] = field(default_factory=dict)


# `device: cpu` (any backend's library code on the CPU) and the cpu backend: float32 only
# (CPU bf16 autocast exists but is slow and inexact on most CPUs)
CPU = Device("cpu", bf16=False, fp16=False, fused_optimizer="adamw_torch_fused", collectives="gloo",
             cannot={"quantization": NO_BITSANDBYTES, "flash_attention_2": NO_FLASH_ATTN, "fsdp": NO_FSDP_ON_CPU,
                     "deepspeed": NO_DEEPSPEED_ON_CPU})
