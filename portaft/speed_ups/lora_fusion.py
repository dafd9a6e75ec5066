"""Each LoRA layer's update added inside one matmul (stage model).

Offered by no built-in backend: with compiled layers (which fuse the scale-and-add
themselves) it was measured no faster (docs/performance.md). A backend or plugin may
offer it where layers are not compiled.
"""

from __future__ import annotations

import types
from typing import Any

NAME = "lora_fusion"
STAGE = "model"


def applies(training: Any) -> str | None:
    return "no adapter (finetune: full)" if training.model is training.base_model else None


def apply(training: Any) -> str:
    fused = fuse_lora_updates(training.model)
    return f"the update of {fused} LoRA layers added inside the matmul (addmm), not by separate scale and add kernels"


def fuse_lora_updates(model: Any) -> int:
    """Give each plain LoRA linear layer of `model` a forward that adds its update inside
    one matmul: base(x) + scaling * B(A(dropout(x))) as addmm(base(x), A(dropout(x)), B^T,
    alpha=scaling), so the [tokens, out] update is never scaled and added by separate
    kernels (forward and backward). The same sum, rounded once instead of three times.
    Returns how many layers; any other call (several adapters, DoRA, merged, disabled,
    extra arguments) goes to peft's own forward."""
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is Linear:  # not peft's subclasses (bitsandbytes, DoRA variants...)
            module.forward = types.MethodType(_fused_lora_forward, module)
            fused += 1
    return fused


def _fused_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    active = self.active_adapters
    adapter = active[0] if len(active) == 1 else None
    if (args or kwargs or adapter is None or adapter not in self.lora_A or self.disable_adapters or self.merged
            or adapter in getattr(self, "lora_variant", {}) or getattr(self, "use_dora", {}).get(adapter)
            or self.lora_B[adapter].bias is not None or not _same_compute_dtype(x, self.lora_A[adapter].weight)):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    update = self.lora_A[adapter](self.lora_dropout[adapter](x))
    fused = torch.addmm(result.reshape(-1, result.shape[-1]), update.reshape(-1, update.shape[-1]),
                        self.lora_B[adapter].weight.t(), alpha=self.scaling[adapter])
    return fused.view(result.shape)


def _same_compute_dtype(x: Any, weight: Any) -> bool:
    """The matmuls can take x as it is: the same dtype, or autocast casts both."""
    from portaft.compat import autocast_enabled

    return x.dtype == weight.dtype or autocast_enabled(x.device.type)
