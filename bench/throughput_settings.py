"""The settings every part of the throughput benchmark shares, and the data it trains on.

The paths, the cuda backend's speed-ups an ablation switches, the model shapes, each
shape's batch and max_length, the seed tutorial's batch, LoRA, the learning rate; then the
synthetic chat sets (`sft_conversations`, `long_conversations`), which bench/shares.py
measures too. Imported as a sibling module by bench/throughput.py and its other
throughput_*.py modules (`python bench/NAME.py` puts bench/ first on sys.path).
"""

from __future__ import annotations

import math
import random

PATHS = ("seed", "tuned", "portaft")
# the cuda backend's speed-ups (portaft/speed_ups/) an ablation may leave out (offered by default) or
# add (not offered); attention_without_masks applies by default under several processes only, and
# added it applies with one process too, so it is in both
DEFAULT_SPEED_UPS = ("queue_ahead", "padding_free", "varlen_attention", "cudnn_attention", "attention_without_masks",
                     "compiled_layers", "fused_loss", "fused_norms")
# the npu backend's (--device npu): --portaft-without takes these there
NPU_SPEED_UPS = ("npu_fused_adamw", "padding_free", "npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul",
                 "npu_swiglu")
OPT_IN_SPEED_UPS = ("attention_without_masks", "lora_fusion", "balanced_shares")
SHAPES = ("qwen2.5-0.5b", "llama-3.2-1b", "deepseek-llm-7b", "tiny")
MAX_LENGTH = {"sft": 1024, "4k": 4096}
# tuned and portaft per-device batch; at 4k a batch of 32 sequences would not fit
BATCH = {"qwen2.5-0.5b": {"sft": 32, "4k": 4}, "llama-3.2-1b": {"sft": 32, "4k": 4},
         "deepseek-llm-7b": {"sft": 16, "4k": 1}, "tiny": {"sft": 8, "4k": 2}}
# the tiny shape (CPU smoke runs) trains the same length mixes with every text 8x shorter
# and max_length / 8: its 129k-token vocabulary makes each token cost on a CPU
SCALE = {"tiny": 8}
SEED_BATCH, SEED_ACCUMULATION = 2, 8  # the seed tutorial's
LORA = {"r": 64, "alpha": 128, "dropout": 0.05, "target_modules": "all-linear"}
LEARNING_RATE = 1e-4
FIRST_LOSSES = 3  # the first steps whose losses must agree between the paths (same data, same initial weights)
SEED = 42  # TrainingArguments' default, also what portaft uses when the recipe sets none
SPEC_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12}  # dense bf16, NVIDIA's data sheets


# --- data ---------------------------------------------------------------------------------

TOKENS_PER_PHRASE = 5  # a phrase of bench/preprocess.py plus its comma, DeepSeek tokenizer
SFT_MEDIAN_TOKENS, SFT_SIGMA = 184, 0.75  # lognormal lengths: mean about 290 once cut at 1024


def sft_conversations(count: int, scale: int = 1, seed: int = 0) -> list[dict]:
    """Chats of a typical SFT length mix: lognormal lengths (tokenized with the deepseek
    template: median ~225, mean ~290, about 2% cut at 1024), 1-4 turns, replies longer
    than questions, a system prompt in 30%. `scale`: every text that many times shorter."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens = rng.lognormvariate(math.log(SFT_MEDIAN_TOKENS), SFT_SIGMA) / scale
        turns = rng.choices([1, 2, 3, 4], weights=[55, 25, 12, 8])[0]
        messages = [{"role": "system", "content": _text(rng, 12 / scale)}] if rng.random() < 0.3 else []
        for _ in range(turns):
            question = tokens / turns * rng.uniform(0.1, 0.4)
            messages += [{"role": "user", "content": _text(rng, question)},
                         {"role": "assistant", "content": _text(rng, tokens / turns - question)}]
        rows.append({"messages": messages})
    return rows


def long_conversations(count: int, scale: int = 1, seed: int = 0) -> list[dict]:
    """24-turn chats of 5,000+ tokens, short questions and long replies: cut at max_length
    4096, nearly every sample is 4096 tokens (a cut in a question drops that question)."""
    rng = random.Random(seed)
    return [{"messages": [m for _ in range(24) for m in (
        {"role": "user", "content": _text(rng, rng.randint(5, 15) / scale)},
        {"role": "assistant", "content": _text(rng, rng.randint(200, 400) / scale)})]} for _ in range(count)]


def _text(rng: random.Random, tokens: float) -> str:
    from preprocess import PHRASES  # bench/preprocess.py

    return "，".join(rng.choice(PHRASES) for _ in range(max(1, round(tokens / TOKENS_PER_PHRASE)))) + "。"
