"""The GGUF's tensors, streamed shard by shard.

A GGUF file states every tensor's name, shape and type before the first byte of data, so
the export goes over the checkpoint twice: once on torch "meta" tensors (shapes only, no
weight read) to plan the file, then once for real, one tensor at a time, writing each as
soon as it is converted. Peak memory is the largest tensor and its converted copies, plus
the safetensors pages the OS maps in while a shard is read; never the whole model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from portaft.errors import UserError

from .arch import Layout, Shapes, convert, extra_tensors

QUANTS = ("f16", "bf16", "q8_0")


@dataclass
class Planned:
    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int


def qtype_of(quant: str) -> Any:
    import gguf

    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}.")
    return {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]


def file_type_of(quant: str) -> Any:
    import gguf

    return {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def shard_files(folder: Path) -> list[Path]:
    """The model's safetensors files, in the index's order when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no *.safetensors weights to export (a .bin checkpoint: load it and "
                        "save_pretrained it again, which writes safetensors).")
    return files


def source_tensors(folder: Path, meta: bool) -> Iterator[tuple[str, Any]]:
    """(name, tensor) over every shard, one tensor at a time; meta=True: shapes only."""
    import torch
    from safetensors import safe_open

    for shard in shard_files(folder):
        with safe_open(str(shard), framework="pt") as opened:
            for name in opened.keys():
                if meta:
                    yield name, torch.empty(opened.get_slice(name).get_shape(), device="meta")
                else:
                    yield name, opened.get_tensor(name)


def converted(folder: Path, layout: Layout, shapes: Shapes, meta: bool) -> Iterator[tuple[str, Any]]:
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, layout.arch), shapes.layers)
    yield from extra_tensors(shapes)
    for name, tensor in source_tensors(folder, meta):
        yield from convert(layout, shapes, name, tensor, names)


def choose_qtype(name: str, shape: tuple[int, ...], wanted: Any) -> Any:
    """Norms, biases and 1-D tensors stay float32 (what llama.cpp's kernels expect of them);
    a matrix whose rows do not split into quant blocks falls back to f16, as llama.cpp's converter does."""
    import gguf

    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    count = 1
    for n in shape:
        count *= n
    return count // block * size


def plan(folder: Path, layout: Layout, shapes: Shapes, quant: str) -> list[Planned]:
    wanted = qtype_of(quant)
    planned = []
    for name, tensor in converted(folder, layout, shapes, meta=True):
        shape = tuple(tensor.shape)
        qtype = choose_qtype(name, shape, wanted)
        planned.append(Planned(name, shape, qtype, nbytes(shape, qtype)))
    return planned


def declare(writer: Any, planned: list[Planned]) -> None:
    """Every tensor's name, shape and type, for the file's header."""
    import numpy as np

    for item in planned:
        writer.add_tensor_info(item.name, item.shape, np.dtype(np.float32), item.nbytes, raw_dtype=item.qtype)


def write_data(writer: Any, folder: Path, layout: Layout, shapes: Shapes, planned: list[Planned],
               progress: Any = None) -> None:
    """Convert and write the tensors, in the planned order, one at a time."""
    import gguf

    order = iter(planned)
    for name, tensor in converted(folder, layout, shapes, meta=False):
        item = next(order)
        if item.name != name or tuple(tensor.shape) != item.shape:  # the two passes must agree
            raise RuntimeError(f"export: planned {item.name} {item.shape}, got {name} {tuple(tensor.shape)}")
        data = encode(tensor, item.qtype)
        writer.write_tensor_data(data)
        del data, tensor
        if progress is not None:
            progress(item)


CHUNK_ROWS = 4096  # rows converted at a time: a 7B model's embedding would need ~8 GB of float32 temporaries at once


def encode(tensor: Any, qtype: Any) -> Any:
    """The tensor's bytes as GGUF stores them, converted a block of rows at a time, so the
    float32 copies and quantization temporaries stay small next to the tensor itself."""
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return tensor.float().numpy()
    rows = tensor.reshape(-1, tensor.shape[-1])
    out = None
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        part = rows[start:start + CHUNK_ROWS].float().numpy()
        part = part.astype(np.float16) if qtype == gguf.GGMLQuantizationType.F16 else gguf.quants.quantize(part, qtype)
        if out is None:
            out = np.empty((rows.shape[0], part.shape[1]), dtype=part.dtype)
        out[start:start + part.shape[0]] = part
    return out
