"""Differences between the transformers / peft versions portaft supports, in one place."""

from __future__ import annotations

import inspect
from typing import Any


def model_dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """transformers 4.56 renamed from_pretrained's `torch_dtype` to `dtype` (a **kwargs key)."""
    import transformers
    from packaging.version import Version

    renamed = Version(transformers.__version__).release >= (4, 56)
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def trainer_kwargs(trainer_cls: type, tokenizer: Any) -> dict[str, Any]:
    """transformers 4.46 renamed Trainer's `tokenizer` to `processing_class`."""
    params = inspect.signature(trainer_cls.__init__).parameters
    return {"processing_class": tokenizer} if "processing_class" in params else {"tokenizer": tokenizer}
