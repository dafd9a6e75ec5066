"""The attention kernels a flattened batch can use, forward + backward, on one CUDA GPU.

    python bench/attention.py --out /tmp/attention        # attention.json and attention.md

A training step's attention on a flattened batch of causal samples: q/k/v [tokens,
heads, dim] in bf16 with the samples' cumulative lengths. Each kernel is checked
against float32 math attention of every sample alone (relative error of the output and
of the q/k/v gradients), then timed (CUDA events, median of `--repeats` after warm-up)
for forward + backward. TFLOP/s counts the causal half of the score and value matmuls:
forward 2 x 2 x L^2 / 2 x dim x heads per sample, backward 2.5 times that.

- flash-varlen: torch's FlashAttention-2 varlen kernels, what `_flash_varlen` uses.
- cudnn-dense: cuDNN's fused attention (`aten::_scaled_dot_product_cudnn_attention`) on
  the batch viewed as [samples, heads, length, dim]: only where every sample has the
  same length (full 4k sequences).
- cudnn-ragged: cuDNN's fused attention given the cumulative lengths
  (`aten::_cudnn_attention_forward`, what nested tensors use): any lengths.
- flash-dense: torch's flash kernels through sdpa on the same dense view (same lengths).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random

import result_files  # bench/result_files.py

# (heads, kv_heads, head_dim) of the benchmark's shapes (bench/models.py)
HEADS = {"deepseek-llm-7b": (32, 32, 128), "qwen2.5-0.5b": (14, 2, 64)}


def lengths_of(batch: str, seed: int = 0) -> list[int]:
    """`4k`: two samples of 4096 tokens; `sft`: 16 samples of the throughput benchmark's mix."""
    if batch == "4k":
        return [4096, 4096]
    rng = random.Random(seed)
    return [min(1024, max(8, round(rng.lognormvariate(math.log(225), 0.75)))) for _ in range(16)]


def kernels():
    import torch

    def flash_varlen(q, k, v, cu, longest, lengths):
        return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, True, False)[0]

    def dense(q, lengths):  # [tokens, heads, dim] -> [samples, heads, length, dim], a view
        return q.view(len(lengths), lengths[0], q.shape[1], q.shape[2]).transpose(1, 2)

    def undense(out):
        return out.transpose(1, 2).reshape(-1, out.shape[1], out.shape[3])

    def cudnn_dense(q, k, v, cu, longest, lengths):
        return undense(torch.ops.aten._scaled_dot_product_cudnn_attention(
            dense(q, lengths), dense(k, lengths), dense(v, lengths), None, True, 0.0, True, False)[0])

    def flash_dense(q, k, v, cu, longest, lengths):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return undense(torch.nn.functional.scaled_dot_product_attention(
                dense(q, lengths), dense(k, lengths), dense(v, lengths), is_causal=True,
                enable_gqa=k.shape[1] != q.shape[1]))

    def cudnn_ragged(q, k, v, cu, longest, lengths):
        return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, longest, longest, True, 0.0, True,
                                                       False)[0]

    return {"flash-varlen": (flash_varlen, False), "cudnn-dense": (cudnn_dense, True),
            "flash-dense": (flash_dense, True), "cudnn-ragged": (cudnn_ragged, False)}


def reference(q, k, v, lengths):
    """float32 causal attention of each sample alone."""
    import torch

    outs, start = [], 0
    for n in lengths:
        part = [t[start:start + n].float().transpose(0, 1) for t in (q, k, v)]  # [heads, n, dim]
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            *part, is_causal=True, enable_gqa=part[1].shape[0] != part[0].shape[0]).transpose(0, 1))
        start += n
    return torch.cat(outs)


def measure(shape: str, batch: str, repeats: int) -> list[dict]:
    import torch

    heads, kv_heads, dim = HEADS[shape]
    lengths = lengths_of(batch)
    tokens = sum(lengths)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    torch.manual_seed(0)
    leaves = [torch.randn(tokens, h, dim, device="cuda", dtype=torch.bfloat16) for h in (heads, kv_heads, kv_heads)]
    grad_out = torch.randn(tokens, heads, dim, device="cuda", dtype=torch.bfloat16)
    ref_leaves = [t.float().requires_grad_() for t in leaves]
    ref_out = reference(*ref_leaves, lengths)
    ref_out.backward(grad_out.float())
    flops = sum(4 * n * n / 2 * dim * heads for n in lengths) * 3.5  # forward + 2.5x backward
    rows = []
    for name, (kernel, same_lengths) in kernels().items():
        row = {"shape": shape, "batch": batch, "kernel": name, "samples": len(lengths), "tokens": tokens}
        if same_lengths and len(set(lengths)) > 1:
            rows.append(row | {"skipped": "the samples differ in length"})
            continue
        q, k, v = (t.clone().requires_grad_() for t in leaves)
        try:
            out = kernel(q, k, v, cu, max(lengths), lengths)
            out.backward(grad_out)
        except Exception as exc:  # noqa: BLE001 (recorded: a kernel this build or GPU lacks)
            rows.append(row | {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"})
            continue
        row["relative_error"] = {name: _relative(got, ref) for name, got, ref in (
            ("out", out, ref_out), ("dq", q.grad, ref_leaves[0].grad), ("dk", k.grad, ref_leaves[1].grad),
            ("dv", v.grad, ref_leaves[2].grad))}
        times = []
        for i in range(repeats + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            kernel(q, k, v, cu, max(lengths), lengths).backward(grad_out)
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end) / 1e3)
        seconds = sorted(times)[len(times) // 2]
        rows.append(row | {"ms": round(seconds * 1e3, 3), "tflops": round(flops / seconds / 1e12, 1)})
    return rows


def _relative(got, ref) -> float:
    return float((got.float() - ref).norm() / ref.norm())


def markdown(record: dict) -> str:
    lines = [f"# Attention kernels, forward + backward ({record['gpu']}, torch {record['torch']}, "
             f"cuDNN {record['cudnn']}, {record['date']})", "",
             "| shape | batch | kernel | ms | TFLOP/s | rel. error out, dq, dk, dv |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        errors = ", ".join(f"{e:.1e}" for e in r["relative_error"].values()) if "relative_error" in r else ""
        lines.append(f"| {r['shape']} | {r['batch']} ({r['samples']} samples, {r['tokens']} tokens) | {r['kernel']} | "
                     f"{r.get('ms', r.get('skipped') or r.get('error'))} | {r.get('tflops', '-')} | {errors} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import datetime

    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "bench/attention.py: no CUDA GPU is visible; it times GPU kernels and runs only on one\n")
    rows = [row for shape, batch in (("deepseek-llm-7b", "4k"), ("deepseek-llm-7b", "sft"), ("qwen2.5-0.5b", "sft"))
            for row in measure(shape, batch, args.repeats)]
    record = {"benchmark": "attention", "date": datetime.date.today().isoformat(),
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "rows": rows}
    result_files.write_results(args.out, "attention", record, markdown(record))


if __name__ == "__main__":
    main()
