"""`portaft export`: a finished run as one GGUF file for llama.cpp, and an Ollama Modelfile.

An adapter is merged first (portaft merge, with its logits check); a whole model is read
as it is. Everything is written under a hidden staging folder inside DIR and moved into
place only when complete, so a failure (bad input, a full disk, Ctrl-C) leaves DIR as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from portaft.errors import UserError

from ..trained import Trained, base_model, chat_template, load_tokenizer, read_output
from . import tensors as tensor_io
from .arch import Layout, Shapes, layout_of, write_hparams
from .modelfile import modelfile
from .vocab import write_tokenizer

STAGING = ".portaft-export"
MERGED_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}  # per parameter, the merge's saved dtype
SLACK = 1.02  # the metadata (vocabulary, merges) and file-system rounding


@dataclass
class ExportResult:
    gguf: Path
    modelfile: Path
    quant: str
    size_bytes: int
    tensors: int
    seconds: float
    tokenizer: str  # "gpt2 (pre-tokenizer deepseek-v3)" ...
    template: str | None  # the built-in template the Modelfile's TEMPLATE renders


def export(output_dir: str | Path, to: str | Path, quant: str = "f16", name: str | None = None,
           overwrite: bool = False, base: str | None = None, echo: Callable[[str], None] = print) -> ExportResult:
    _require_gguf()
    tensor_io.qtype_of(quant)
    trained = read_output(output_dir)
    to = Path(to)
    _check_target(to, overwrite, trained.folder)
    name = _file_stem(name, trained)
    config, where = _config(trained, base)
    layout = layout_of(config, where)
    shapes = Shapes(config)
    planned = _plan_for_disk(trained, base, layout, shapes, quant)
    _check_disk(to, trained, planned, config)

    created = not to.exists()
    staging = to / STAGING
    start = time.monotonic()
    try:
        shutil.rmtree(staging, ignore_errors=True)  # what an export killed outright left
        staging.mkdir(parents=True)
        if trained.adapter:
            from ..merge import merge

            model_folder = staging / "merged"
            merge(trained.folder, model_folder, base=base, echo=echo)
            tokenizer_folder = model_folder
        else:
            model_folder, tokenizer_folder = trained.folder, trained.tokenizer_folder
        if tokenizer_folder is None:
            raise UserError(f"{trained.folder}: no tokenizer saved with the model (tokenizer_config.json); "
                            "the GGUF needs it.")
        planned = tensor_io.plan(model_folder, layout, shapes, quant)
        result = _write(staging, name, quant, layout, shapes, planned, model_folder, tokenizer_folder, trained, echo)
        for path in (result.gguf, result.modelfile):
            os.replace(path, to / path.name)
        result.gguf, result.modelfile = to / result.gguf.name, to / result.modelfile.name
    except BaseException:
        shutil.rmtree(to if created else staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    result.seconds = time.monotonic() - start
    echo(f"portaft: wrote {result.gguf} ({_human(result.size_bytes)}, {quant}, {result.tensors} tensors, "
         f"tokenizer {result.tokenizer}) in {result.seconds:.0f}s, and {result.modelfile}")
    echo(f"portaft: run it with Ollama: ollama create {name} -f {result.modelfile} && ollama run {name}")
    echo(f"portaft: or with llama.cpp: llama-cli -m {result.gguf} -cnv")
    return result


def _write(staging: Path, name: str, quant: str, layout: Layout, shapes: Shapes, planned: list, model_folder: Path,
           tokenizer_folder: Path, trained: Trained, echo: Callable[[str], None]) -> ExportResult:
    import gguf

    from portaft.compat import chat_template_renderer
    from portaft.data.templates import reply_ending

    tokenizer = load_tokenizer(Trained(tokenizer_folder, trained.recipe, None, False, tokenizer_folder))
    template = chat_template(tokenizer)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, layout.arch)])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    write_hparams(writer, layout, shapes)
    writer.add_file_type(tensor_io.file_type_of(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    meta = write_tokenizer(writer, tokenizer_folder, tokenizer, shapes.config["vocab_size"], template)
    tensor_io.declare(writer, planned)

    path = staging / f"{name}.gguf"
    echo(f"portaft: writing {path.name}: {len(planned)} tensors, {_human(sum(p.nbytes for p in planned))} ({quant})")
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    tensor_io.write_data(writer, model_folder, layout, shapes, planned)
    writer.close()

    ending = reply_ending(chat_template_renderer(tokenizer, template)) if template else ""
    source = str(trained.folder)
    text = modelfile(path.name, template, trained.system, ending, tokenizer.bos_token, tokenizer.eos_token,
                     meta.add_bos, source)
    (staging / "Modelfile").write_text(text.text, encoding="utf-8")
    tokenizer_label = f"{meta.model}" + (f", pre-tokenizer {meta.pre}" if meta.model == "gpt2" else "")
    return ExportResult(path, staging / "Modelfile", quant, path.stat().st_size, len(planned), 0.0, tokenizer_label,
                        text.template_name)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("portaft export writes GGUF with the gguf package, which is not installed: "
                        "pip install 'portaft[export]' (or pip install gguf).") from None


def _check_target(to: Path, overwrite: bool, source: Path) -> None:
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to}: a file is there; give a folder for the GGUF and its Modelfile.")
    if to.exists() and to.resolve() == source.resolve():
        raise UserError(f"--to {to}: that is the run's output folder; choose another folder.")
    if to.is_dir() and any(p.name != STAGING for p in to.iterdir()) and not overwrite:
        raise UserError(f"--to {to}: the folder is not empty. Choose a new folder, or pass --overwrite to replace "
                        "the GGUF and Modelfile in it.")


def _file_stem(name: str | None, trained: Trained) -> str:
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names the .gguf file "
                            "and the Ollama model).")
        return name
    folder = trained.folder.resolve()
    default = f"{folder.parent.name}-{folder.name}" if folder.name.startswith("checkpoint-") else folder.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", default).strip("-.") or "model"


def _config(trained: Trained, base: str | None) -> tuple[dict, str]:
    """The config.json of the model to export (for an adapter, its base's), read before anything loads."""
    if not trained.adapter:
        return json.loads((trained.folder / "config.json").read_text(encoding="utf-8")), str(trained.folder)
    name, where = base_model(trained, base)
    folder = _base_folder(trained, base)
    if folder is None:
        raise UserError(f"the base model {name!r} ({where}) is not here: no such folder or cached snapshot. "
                        "Pass --base with the base model's folder.")
    return json.loads((folder / "config.json").read_text(encoding="utf-8")), f"{name} ({where})"


def _base_folder(trained: Trained, base: str | None) -> Path | None:
    from ..merge import _local_folder

    name, _ = base_model(trained, base)
    folder = _local_folder(name)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _plan_for_disk(trained: Trained, base: str | None, layout: Layout, shapes: Shapes, quant: str) -> list | None:
    """The GGUF's tensors, planned from the model (an adapter's: its base, whose shapes the merge keeps)."""
    if not trained.adapter:
        return tensor_io.plan(trained.folder, layout, shapes, quant)
    try:
        return tensor_io.plan(_base_folder(trained, base), layout, shapes, quant)
    except UserError:  # a base saved as .bin: the merge writes safetensors; its size is not known before
        return None


def _check_disk(to: Path, trained: Trained, planned: list | None, config: dict) -> None:
    """Room for the GGUF (and, for an adapter, the merged model it is read from), before anything is written."""
    gguf_bytes = sum(p.nbytes for p in planned or [])
    merged = 0
    if trained.adapter:
        params = sum(_count(p.shape) for p in planned or [])
        merged = params * MERGED_BYTES.get(trained.trained_dtype, 4)
    needed = int((gguf_bytes + merged) * SLACK)
    existing = next(p for p in (to, *to.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        what = f"{_human(gguf_bytes)} for the GGUF" + (f" and {_human(merged)} for the merged model it is made from"
                                                        if merged else "")
        raise UserError(f"--to {to}: not enough disk: the export needs about {_human(needed)} ({what}), "
                        f"{_human(free)} is free there. Free some space or choose another folder.")


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


def _human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
