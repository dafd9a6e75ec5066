"""Differences between the transformers / peft versions portaft supports, in one place."""

from __future__ import annotations

import inspect
from typing import Any


def model_dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """transformers 4.56 renamed from_pretrained's `torch_dtype` to `dtype`."""
    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    return {"dtype": dtype} if "dtype" in params else {"torch_dtype": dtype}


def trainer_kwargs(trainer_cls: type, tokenizer: Any) -> dict[str, Any]:
    """transformers 4.46 renamed Trainer's `tokenizer` to `processing_class`."""
    params = inspect.signature(trainer_cls.__init__).parameters
    return {"processing_class": tokenizer} if "processing_class" in params else {"tokenizer": tokenizer}
