"""The cuda backend: transformers + peft on NVIDIA GPUs; bf16 where supported, else fp16."""

from portaft import hookimpl

from ._transformers import DevicePolicy, TransformersBackend


def _unavailable_reason() -> str | None:
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a build without CUDA; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False; check the driver and CUDA_VISIBLE_DEVICES)"
    return None


def _supports_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _has_flash_attention() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def _cannot_quantize() -> str | None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'portaft[qlora]')"
    return None


CUDA = DevicePolicy(unavailable_reason=_unavailable_reason, supports_bf16=_supports_bf16, supports_fp16=True,
                    use_cpu=False, has_flash_attention=_has_flash_attention, cannot_quantize=_cannot_quantize,
                    padding_free=True, varlen_attention=True, varlen_without_masks="several_processes",
                    cudnn_attention=True, fused_loss=True, larger_loss_chunks=True, fused_norms=True,
                    compile_layers=True, queue_ahead=True)


@hookimpl
def register_backends(register):
    register(TransformersBackend(name="cuda", device_type="cuda", priority=50, distributed_backend="nccl", device=CUDA))
