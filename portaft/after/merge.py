"""`portaft merge`: a run's LoRA adapter folded into its base model, saved as a plain model.

The merged folder loads with `AutoModelForCausalLM.from_pretrained` alone (no peft). Before
saving, the merged model's logits on a short chat are compared with base + adapter's:
a merge that changed what the model computes is refused, not saved.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from portaft.errors import UserError
from portaft.runner.outputs import RECIPE_FILE

from .trained import base_model, chat_template, load_model, load_tokenizer, read_output

DTYPES = ("auto", "float32", "bfloat16", "float16")
# largest |merged - unmerged| logit allowed, as a fraction of the largest |logit|. The merge
# and its check run in float32, where folding B @ A into W rounds at ~1e-7: a broken
# merge is off by the adapter's whole effect. (Checked in bfloat16 instead, the two
# paths' roundings differ by up to 9% of the largest logit on a 7B model: no check.)
RELATIVE_TOLERANCE = {"float32": 1e-4}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".index.json")
SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # as huggingface_hub reads them
PROBE = [{"role": "user", "content": "Who are you? 你是谁？"},
         {"role": "assistant", "content": "I am a helpful assistant. 我是一个有用的助手。"}]


class MergeCheckFailed(UserError):
    """The merged model does not compute what base + adapter computes."""

    exit_code = 3  # a check that ran and failed, as `portaft parity`


@dataclass
class MergeResult:
    folder: Path
    dtype: str
    shards: int
    size_bytes: int
    max_difference: float  # largest |merged - (base + adapter)| logit on the probe
    tolerance: float
    adapter_effect: float  # largest |(base + adapter) - base| logit: what the check could catch
    probe_tokens: int
    copied: list[str] = field(default_factory=list)  # files of the base model copied next to the merged weights


def merge(output_dir: str | Path, to: str | Path, max_shard_size: str = "2GB", dtype: str = "auto",
          overwrite: bool = False, base: str | None = None, echo: Callable[[str], None] = print) -> MergeResult:
    """Merge the adapter in `output_dir` into its base model and save the result in `to`.

    The merge and its logits check run in float32 on the CPU; the result is saved in
    `dtype`: auto = the dtype the run held the weights in (its recipe's model.dtype);
    without a recipe, the base checkpoint's own."""
    import torch

    shard_bytes = parse_size(max_shard_size)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    trained = read_output(output_dir)
    if not trained.adapter:
        full = trained.recipe is not None and trained.recipe.finetune == "full"
        raise UserError(f"{trained.folder}: already a whole model ({'finetune: full trained every weight; ' if full else ''}"
                        "config.json, no adapter_config.json), so there is no adapter to merge. Use the folder "
                        f"directly: AutoModelForCausalLM.from_pretrained('{trained.folder}') or "
                        f"`portaft chat {trained.folder}`.")
    base_name, _ = base_model(trained, base)
    to = _target(Path(to), overwrite, [trained.folder, Path(base_name)])

    chosen = trained.trained_dtype if dtype == "auto" else dtype
    echo(f"portaft: loading {base_name} (float32, saved as {chosen}) + adapter {trained.folder}")
    model = load_model(trained, "float32", base).eval()
    tokenizer = load_tokenizer(trained, base)
    probe = _probe(tokenizer, chat_template(tokenizer), trained.system)
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(probe).logits.float()
        adapted = model(probe).logits.float()
        merged = model.merge_and_unload()
        gap = merged(probe).logits.float() - adapted
    difference = gap.abs().max().item()
    relative = (gap.norm() / adapted.norm()).item()
    tolerance = RELATIVE_TOLERANCE["float32"] * max(1.0, adapted.abs().max().item())
    effect = (adapted - base_logits).abs().max().item()
    check = (f"logits check: max |merged - (base + adapter)| = {difference:.2e} on a {probe.shape[1]}-token chat "
             f"(tolerance {tolerance:.2e}, float32; relative RMS {relative:.1e}); the adapter itself moves them by up "
             f"to {effect:.2e}")
    if difference > tolerance:
        raise MergeCheckFailed(f"{check}. The merged model does not compute what base + adapter computes, so "
                               f"nothing was saved. Please report this with the output folder's portaft_run.json.")
    echo(f"portaft: {check}")

    used = chosen
    merged.to(getattr(torch, chosen))  # one rounding, of the exactly merged weights
    to.mkdir(parents=True, exist_ok=True)
    _clear_weights(to)
    merged.save_pretrained(str(to), max_shard_size=shard_bytes)  # safetensors: the default of every supported transformers
    tokenizer.save_pretrained(str(to))  # carrying the chat template the run trained with
    if trained.recipe_file is not None:
        shutil.copy2(trained.recipe_file, to / RECIPE_FILE)  # what trained it; `portaft chat` reads its system prompt
    copied = copy_base_files(_local_folder(base_name), to)
    shards = sorted(to.glob("*.safetensors"))
    result = MergeResult(to, used, len(shards), sum(p.stat().st_size for p in shards), difference, tolerance, effect,
                         int(probe.shape[1]), copied)
    echo(f"portaft: merged model saved in {to}: {result.shards} shard{'s' if result.shards != 1 else ''}, "
         f"{_human(result.size_bytes)} ({used})")
    if copied:
        echo(f"portaft: copied from the base model: {', '.join(copied)}")
    echo(f"portaft: load it with AutoModelForCausalLM.from_pretrained('{to}'), or talk to it: portaft chat {to}")
    return result


def parse_size(text: str | int) -> int:
    """Bytes in a size such as 2GB, 500MB, 1.5GiB or 1000000 (decimal units, as transformers reads them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", str(text), flags=re.I)
    size = int(float(match[1]) * SIZE_UNITS[(match[2] or "b").lower()]) if match else 0
    if size <= 0:
        raise UserError(f"--max-shard-size {text!r}: not a size. Write it as 2GB, 500MB or 1GiB.")
    return size


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def copy_base_files(base_folder: Path | None, to: Path) -> list[str]:
    """Copy what the base model folder has beyond its weights (remote-code .py files,
    generation_config.json, LICENSE, README...) and `to` lacks; never a weight file, never
    a hidden one (.git, .cache). Returns the names copied."""
    if base_folder is None:
        return []
    skip = shutil.ignore_patterns(*(f"*{suffix}" for suffix in WEIGHT_SUFFIXES), ".*")
    copied = []
    for entry in sorted(base_folder.iterdir()):
        if entry.name.startswith(".") or is_weight_file(entry.name) or (to / entry.name).exists():
            continue
        if entry.is_dir():
            shutil.copytree(entry, to / entry.name, ignore=skip)
        else:
            shutil.copy2(entry, to / entry.name)
        copied.append(entry.name + ("/" if entry.is_dir() else ""))
    return copied


def _target(to: Path, overwrite: bool, protected: list[Path]) -> Path:
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to}: a file is there; give a folder to save the merged model in.")
    for folder in protected:
        if to.exists() and folder.exists() and to.resolve() == folder.resolve():
            raise UserError(f"--to {to}: that is {folder}, which the merge reads; choose another folder.")
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise UserError(f"--to {to}: the folder is not empty. Choose a new folder, or pass --overwrite "
                        "to replace the model weights in it.")
    return to


def _clear_weights(to: Path) -> None:
    """A previous merge's shards would stay next to the new ones (and be loaded with them)."""
    for path in to.iterdir():
        if path.is_file() and is_weight_file(path.name):
            path.unlink()


def _probe(tokenizer: Any, template: str | None, system: str | None) -> Any:
    """Token ids of a short chat rendered with the template the run trained with."""
    from portaft.data.templates import render

    if template is None:  # a bare adapter whose tokenizer has no template: plain text
        text = " ".join(m["content"] for m in PROBE)
        return tokenizer(text, return_tensors="pt")["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + PROBE
    return tokenizer(render(tokenizer, template, messages), add_special_tokens=False, return_tensors="pt")["input_ids"]


def _local_folder(name: str) -> Path | None:
    """The base model's folder: the path itself, or a hub id's snapshot in the local cache."""
    if Path(name).is_dir():
        return Path(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached as a whole snapshot: only the merged files are written
        return None


def _human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
