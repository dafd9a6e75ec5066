"""The cuda backend: transformers + peft on NVIDIA GPUs; bf16 where supported, else fp16."""

import importlib.util

from portaft.plugins.hookspecs import hookimpl
from portaft.speed_ups import (attention_without_masks, compiled_layers, cudnn_attention, fused_loss, fused_norms,
                               padding_free, queue_ahead, varlen_attention)

from .base import TransformersBackend
from .device import Device


class CudaBackend(TransformersBackend):
    name = "cuda"
    device_type = "cuda"
    priority = 50
    distributed_backend = "nccl"
    # measured one by one (docs/performance.md); the order matters: the attention speed-ups
    # need flattened batches, fused_norms stays off where the layers are compiled
    SPEED_UPS = (*TransformersBackend.SPEED_UPS, queue_ahead, padding_free, varlen_attention, cudnn_attention,
                 attention_without_masks, compiled_layers, fused_loss, fused_norms)

    def unavailable_reason(self) -> str | None:
        import torch

        if torch.version.cuda is None:
            return f"this torch ({torch.__version__}) is a build without CUDA; install a CUDA build of torch"
        if not torch.cuda.is_available():
            return ("no CUDA device is visible (torch.cuda.is_available() is False; check the driver and "
                    "CUDA_VISIBLE_DEVICES)")
        return None

    def device(self) -> Device:
        import torch

        cannot = {}
        if importlib.util.find_spec("bitsandbytes") is None:
            cannot["quantization"] = "bitsandbytes is not installed (pip install 'portaft[qlora]')"
        if importlib.util.find_spec("flash_attn") is None:
            cannot["flash_attention_2"] = "the flash-attn package is not installed"
        return Device("cuda", bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), fp16=True,
                      fused_optimizer="adamw_torch_fused", collectives="nccl", cannot=cannot)


@hookimpl
def register_backends(register):
    register(CudaBackend())
