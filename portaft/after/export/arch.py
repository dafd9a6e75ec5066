"""Which checkpoints portaft exports, and how their tensors and settings become llama.cpp's.

The GGUF names come from the `gguf` package's own tables (`gguf.get_tensor_name_map`, the
ones llama.cpp's converter uses). What this module adds is what those tables cannot say:
the rotary permutation of Llama-style q/k weights, InternLM2's fused `wqkv` split into
q, k and v in the Llama layout, and Llama 3's rope-scaling factors (a tensor llama.cpp
reads instead of the config), as llama.cpp's convert_hf_to_gguf.py does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from portaft.errors import UserError


@dataclass(frozen=True)
class Layout:
    hf_class: str  # config.json `architectures[0]`
    arch: str  # the gguf.MODEL_ARCH member's name
    family: str  # for messages
    permute_qk: bool  # HF's rotate-half q/k rows, re-ordered to llama.cpp's interleaved rotary
    fused_qkv: bool = False  # InternLM2's attention.wqkv


LAYOUTS = {
    layout.hf_class: layout
    for layout in (
        Layout("LlamaForCausalLM", "LLAMA", "Llama (DeepSeek-LLM, Llama 2, Llama 3)", permute_qk=True),
        Layout("Qwen2ForCausalLM", "QWEN2", "Qwen2 / Qwen2.5", permute_qk=False),
        Layout("Qwen3ForCausalLM", "QWEN3", "Qwen3", permute_qk=False),
        Layout("InternLM2ForCausalLM", "INTERNLM2", "InternLM2", permute_qk=True, fused_qkv=True),
    )
}
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias")  # buffers, not weights


def layout_of(config: dict, where: str) -> Layout:
    """The layout of a model config.json, or a UserError naming its architecture and the supported ones."""
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    layout = LAYOUTS.get(names[0])
    if layout is None:
        supported = ", ".join(f"{l.hf_class} ({l.family})" for l in LAYOUTS.values())
        raise UserError(f"{where}: the architecture {names[0]} cannot be exported to GGUF by portaft. "
                        f"Supported: {supported}.")
    return layout


class Shapes:
    """The config values the tensor conversion and the GGUF metadata need."""

    def __init__(self, config: dict):
        self.config = config
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.hidden = config["hidden_size"]
        self.head_dim = config.get("head_dim") or self.hidden // self.heads
        self.layers = config["num_hidden_layers"]

    @property
    def rope(self) -> dict:
        """theta and scaling: transformers 5 writes `rope_parameters`, older ones rope_theta + rope_scaling."""
        params = dict(self.config.get("rope_parameters") or {})
        scaling = self.config.get("rope_scaling") or {}
        params.update({k: v for k, v in scaling.items() if k not in params})
        if "rope_type" not in params and "type" in params:
            params["rope_type"] = params["type"]
        params.setdefault("rope_theta", self.config.get("rope_theta", 10000.0))
        return params


def convert(layout: Layout, shapes: Shapes, name: str, tensor: Any, names: Any) -> Iterator[tuple[str, Any]]:
    """(GGUF name, tensor) for one checkpoint tensor. Works on torch "meta" tensors too,
    which is how the export plans its file (names, shapes, sizes) before reading any weight."""
    if name.endswith(SKIPPED_SUFFIXES):
        return
    if layout.fused_qkv and name.endswith(".attention.wqkv.weight"):
        block = name.split(".")[2]
        yield from _split_wqkv(shapes, tensor, block)
        return
    if layout.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
        tensor = permute(tensor, shapes.heads)
    elif layout.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
        tensor = permute(tensor, shapes.kv_heads)
    new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if new_name is None:
        raise UserError(f"the checkpoint has a tensor {name!r} that a {layout.hf_class} GGUF has no place for; "
                        "portaft exports the plain architecture only.")
    yield new_name, tensor


def permute(weights: Any, heads: int) -> Any:
    """Rows of each head from HF's halves (rotate_half) to llama.cpp's interleaved pairs."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _split_wqkv(shapes: Shapes, wqkv: Any, block: str) -> Iterator[tuple[str, Any]]:
    """InternLM2 packs, per key/value group, its query heads then one key and one value head."""
    per_group = shapes.heads // shapes.kv_heads
    grouped = wqkv.reshape(shapes.kv_heads, per_group + 2, shapes.head_dim, wqkv.shape[-1])
    q = grouped[:, :per_group].reshape(-1, wqkv.shape[-1])
    k = grouped[:, -2].reshape(-1, wqkv.shape[-1])
    v = grouped[:, -1].reshape(-1, wqkv.shape[-1])
    yield f"blk.{block}.attn_q.weight", permute(q, shapes.heads)
    yield f"blk.{block}.attn_k.weight", permute(k, shapes.kv_heads)
    yield f"blk.{block}.attn_v.weight", v


def extra_tensors(shapes: Shapes) -> Iterator[tuple[str, Any]]:
    """Llama 3.1-style rope scaling: llama.cpp reads per-frequency factors from a tensor."""
    import torch

    rope = shapes.rope
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return
    dim = shapes.head_dim
    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs.tolist():
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    yield "rope_freqs.weight", torch.tensor(factors, dtype=torch.float32)


def write_hparams(writer: Any, layout: Layout, shapes: Shapes) -> None:
    """Context length, sizes, head counts, rope and norm settings, as llama.cpp reads them."""
    import gguf

    config = shapes.config
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(shapes.hidden)
    writer.add_block_count(shapes.layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(shapes.heads)
    writer.add_head_count_kv(shapes.kv_heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    if "head_dim" in config:
        writer.add_key_length(shapes.head_dim)
        writer.add_value_length(shapes.head_dim)
    if layout.permute_qk:
        writer.add_rope_dimension_count(shapes.head_dim)
    rope = shapes.rope
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = str(rope.get("rope_type", "default")).lower()
    if kind == "linear" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
