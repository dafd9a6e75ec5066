"""What the Ascend speed-ups (npu_*.py) share: finding a torch_npu operator, and the decoder
families they know. Not a speed-up itself (no NAME).

An operator is looked up on the installed torch_npu, imported through
`backends/npu_platform.py` so that the platform's settings are in place first. A speed-up
applies only where its operator exists: torch_npu releases add operators (npu_swiglu is
2.1 and later, for Atlas A2), and a missing one is a note, never an error.
"""

from __future__ import annotations

import importlib.util
from typing import Any

# decoders whose RMSNorm is weight * x / rms(x), whose MLP is down(silu(gate) * up) and whose
# rotary embedding rotates halves: the shapes the npu_* ops compute (InternLM2 is remote code)
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "internlm2")


def torch_npu_problem() -> str | None:
    """Why torch_npu cannot be used here; None when it imports."""
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed"
    from portaft.backends.npu_platform import import_torch_npu

    try:
        import_torch_npu()
    except Exception as exc:  # noqa: BLE001 (a CPU-only container: libhccl.so missing, and the like)
        return f"torch_npu failed to import ({type(exc).__name__}: {exc})"
    return None


def op(path: str) -> Any:
    """The torch_npu attribute at dotted `path` ("npu_rms_norm", "optim.NpuFusedAdamW"); None
    where torch_npu or the attribute is missing."""
    if torch_npu_problem() is not None:
        return None
    import importlib

    *package, name = ["torch_npu", *path.split(".")]
    try:  # a submodule the package may not import itself (torch_npu.optim)
        module = importlib.import_module(".".join(package))
    except ImportError:
        return None
    return getattr(module, name, None)


def missing(path: str) -> str | None:
    """None where torch_npu has `path`, else why the speed-up is not used."""
    problem = torch_npu_problem()
    if problem is not None:
        return problem
    return None if op(path) is not None else f"this torch_npu has no torch_npu.{path}"


def family_problem(model: Any) -> str | None:
    """None for a decoder family the fused ops compute exactly, else why not."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        return f"model type {model_type} is not one of {', '.join(FAMILIES)}"
    return None


def atlas_a2_problem(training: Any, what: str) -> str | None:
    """None on an Atlas A2/A3 NPU (910B, 910_93), or when not training on an NPU (the CPU
    simulation); else why `what` is not used: its documentation lists A2 only."""
    if training.device.type != "npu":
        return None
    import torch

    name = str(torch.npu.get_device_name(0))
    if "910B" in name or "910_93" in name:
        return None
    return f"{what} runs on Atlas A2/A3 (910B) NPUs only, per its documentation; this is {name}"
