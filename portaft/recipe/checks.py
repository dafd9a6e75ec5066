"""What a recipe can get wrong across several keys, and where it meets the world (the model
it names, the folder it writes), found before any model loads. Each problem is a
(YAML path, message) pair: the path is the key the user must change, so the message
cites that key's line (or the override that set it).

`combination_problems` works on the raw mapping and needs nothing outside the recipe;
`surroundings_problems` looks at the file system and, for a hub id, asks the hub once
with a short timeout (`portaft validate` and `portaft run` call it, not every reader).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .defaults import EVAL_STEPS

Problem = tuple[tuple, str]
HUB_TIMEOUT_S = 5.0  # one request, no retries: an unreachable hub is said in seconds, not a minute


def _word(value: Any, default: str) -> str:
    """An IntervalStrategy / string / None as the word a recipe writes."""
    value = getattr(value, "value", value)
    return default if value is None else str(value).lower()


def combination_problems(data: dict) -> list[Problem]:
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    problems = _eval_prompts(data) + _evaluation(data, train) + _best_model(train) + _packing(data, train)
    if isinstance(data.get("quantization"), dict) and data.get("finetune") == "full":
        problems.append((("quantization",), "quantization is set with finetune: full, but quantized weights cannot "
                                            "be trained: use finetune: lora (QLoRA) or remove quantization."))
    return problems


def _eval_prompts(data: dict) -> list[Problem]:
    prompts = data.get("eval_prompts") or []
    problems = []
    if data.get("eval_every") is not None and not prompts:
        problems.append((("eval_every",), "eval_every is set but eval_prompts is empty: add the questions to answer, "
                                          "or remove eval_every."))
    for index, prompt in enumerate(prompts if isinstance(prompts, list) else []):
        if isinstance(prompt, list) and (not prompt or not isinstance(prompt[-1], dict)
                                         or prompt[-1].get("role") != "user"):
            problems.append((("eval_prompts", index), "a conversation that does not end with a user turn: end it "
                                                      "with the question to answer."))
    return problems


def has_eval_data(data: dict) -> bool:
    sources = data.get("data") if isinstance(data.get("data"), list) else []
    per_source = any(isinstance(s, dict) and s.get("val_size") for s in sources)
    return bool(data.get("val_size") or data.get("eval_data") or per_source)


def eval_strategy_key(train: dict) -> str:
    return "evaluation_strategy" if "evaluation_strategy" in train and "eval_strategy" not in train \
        else "eval_strategy"


def _evaluation(data: dict, train: dict) -> list[Problem]:
    key = eval_strategy_key(train)
    strategy = _word(train.get(key), "no")
    if strategy != "no" and not has_eval_data(data):
        return [(("train", key), f"{strategy}: evaluation needs eval data, and the recipe has none. Add val_size: "
                                 "0.1 (a share of each data source) or eval_data: [{path: ...}], or remove it.")]
    if strategy == "no" and train.get("load_best_model_at_end"):
        return [(("train", "load_best_model_at_end"), "needs evaluation: set train.eval_strategy: steps (and "
                                                      "val_size or eval_data), or remove it.")]
    return []


def _best_model(train: dict) -> list[Problem]:
    """transformers refuses these only when TrainingArguments are built, after the data."""
    if not train.get("load_best_model_at_end"):
        return []
    evaluation, saving = _word(train.get(eval_strategy_key(train)), "no"), _word(train.get("save_strategy"), "steps")
    if saving == "best" or evaluation == "no":
        return []
    if evaluation != saving:
        return [(("train", "save_strategy"), f"{saving}, but load_best_model_at_end needs it to match "
                                             f"train.eval_strategy ({evaluation}): the best model is a saved one.")]
    if evaluation != "steps":
        return []
    save = train.get("save_steps", 500)
    evaluate = train.get("eval_steps", EVAL_STEPS)
    if not all(isinstance(v, (int, float)) and v > 0 for v in (save, evaluate)):
        return []
    fractions = (save < 1, evaluate < 1)
    if fractions[0] != fractions[1] or round(save * 10**6) % round(evaluate * 10**6):
        where = ("train", "save_steps") if "save_steps" in train else ("train", "load_best_model_at_end")
        return [(where, f"load_best_model_at_end keeps a checkpoint that was evaluated, so save_steps ({save:g}) "
                        f"must be a multiple of eval_steps ({evaluate:g}"
                        f"{'' if 'eval_steps' in train else ', portaft default'}), both steps or both fractions. "
                        f"Set train.save_steps: {evaluate:g} (or a multiple).")]
    return []


def _packing(data: dict, train: dict) -> list[Problem]:
    problems = []
    if data.get("packing"):
        for key, why in (("group_by_length", "packing draws its own token-budget batches, so batches would not be "
                                             "grouped by length"),
                         ("auto_find_batch_size", "packed batches are sized by tokens, not by a batch size to halve")):
            if train.get(key):
                problems.append((("train", key), f"true does nothing with packing: true ({why}). Remove one."))
    elif data.get("packing_tokens") is not None:
        problems.append((("packing_tokens",), "set, but packing is off, so it would be ignored: set packing: true, "
                                              "or remove packing_tokens."))
    return problems


# --- the world the recipe names --------------------------------------------------------

def surroundings_problems(data: dict) -> list[Problem]:
    problems = []
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if isinstance(model.get("name_or_path"), str):
        problem = model_problem(model["name_or_path"])
        if problem:
            problems.append((("model", "name_or_path"), problem))
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    if isinstance(train.get("output_dir"), str):
        problem = output_problem(Path(train["output_dir"]))
        if problem:
            problems.append((("train", "output_dir"), problem))
    return problems


def _looks_like_a_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


def model_problem(name: str) -> str | None:
    """None when `name` is a local folder, a hub id in the local cache, or one the hub
    answers for within HUB_TIMEOUT_S; else what is wrong and what to do."""
    if Path(name).expanduser().is_dir():
        return None
    if _looks_like_a_path(name):
        return f"{name!r}: no such folder (and not a hub id, which reads organisation/name). Check the path."
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None  # downloaded before: loads without the network
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline:
        return (f"{name!r} is not a local folder nor in the hub cache, and the hub is off (HF_HUB_OFFLINE=1). "
                "Download it where the network is (huggingface-cli download NAME --local-dir DIR) and give the folder.")
    try:
        model_info(name, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 (which error tells what to say; none of them is portaft's fault)
        kind = type(exc).__name__
        if kind in ("RepositoryNotFoundError", "RevisionNotFoundError"):
            return (f"{name!r}: no such model on the hub (or it is private: log in with huggingface-cli login). "
                    "Check the id, or give a local folder.")
        if kind == "GatedRepoError":
            return f"{name!r} is gated: accept its license on the hub and log in (huggingface-cli login)."
        return (f"{name!r} is not a local folder, and the hub could not be reached within {HUB_TIMEOUT_S:g} s "
                f"({kind}). Give a local folder, or check the network (HF_ENDPOINT for a mirror).")
    return None


def output_problem(folder: Path) -> str | None:
    """None when the run can create and write `folder`: tried, not guessed from permission
    bits (which do not stop root, and do not see a read-only file system)."""
    folder = folder.expanduser()
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder. Choose another train.output_dir."
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {folder} cannot be made. Choose another train.output_dir."
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".portaft-write-check-").cleanup()
    except OSError as exc:
        return (f"{folder} cannot be written ({existing}: {exc.strerror or exc}). Choose a folder you can write, "
                "or fix its permissions.")
    return None
