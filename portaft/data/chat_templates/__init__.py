"""The named chat templates portaft ships, each verbatim from the model's tokenizer_config.json.

One module per model family; where each string was copied from is noted above it (the
public repositories that vendor these configs; checked character for character against a
second copy). `default` is LLaMA-Factory's `default` template written as Jinja.
"""

from __future__ import annotations

from typing import Any

from .chatml import CHATML, INTERNLM2
from .deepseek import DEEPSEEK
from .gemma import GEMMA3
from .llama import LLAMA2, LLAMA3, LLAMA31
from .llamafactory import DEFAULT
from .mistral import MISTRAL_V03
from .qwen import QWEN2, QWEN25
from .qwen3 import QWEN3, QWEN3_NO_THINKING

BUILT_IN = {
    "deepseek": DEEPSEEK,
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "llama3.1": LLAMA31,
    "qwen": QWEN25,
    "qwen2": QWEN2,
    "qwen3": QWEN3,
    "qwen3_nothink": QWEN3_NO_THINKING,
    "mistral": MISTRAL_V03,
    "gemma": GEMMA3,
    "chatml": CHATML,
    "internlm2": INTERNLM2,
    "default": DEFAULT,
}

__all__ = ["BUILT_IN", "CHATML", "DEEPSEEK", "DEFAULT", "GEMMA3", "INTERNLM2", "LLAMA2", "LLAMA3", "LLAMA31",
           "MISTRAL_V03", "QWEN2", "QWEN25", "QWEN3", "QWEN3_NO_THINKING", "guess_template"]

MODEL_TYPES = {  # config.json model_type -> template, for a tokenizer with no chat_template of its own
    "qwen2": "qwen", "qwen2_moe": "qwen",
    "qwen3": "qwen3", "qwen3_moe": "qwen3",
    "internlm2": "internlm2", "internlm2_5": "internlm2",
    "mistral": "mistral",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
}


def guess_template(model_type: str | None, tokenizer: Any) -> str | None:
    """The built-in template for a model config's `model_type` (template: auto).

    `llama` is shared by Llama 2, Llama 3, Llama 3.1 and DeepSeek-LLM, so their tokenizers decide
    (Llama 3.1 added <|eom_id|> to Llama 3's special tokens).
    """
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    if model_type == "llama":
        vocab = tokenizer.get_vocab()
        if "<|eot_id|>" in vocab:
            return "llama3.1" if "<|eom_id|>" in vocab else "llama3"
        if tokenizer.bos_token == "<｜begin▁of▁sentence｜>":
            return "deepseek"
        if tokenizer.bos_token == "<s>":
            return "llama2"
    return None
