"""A run's output folder read back, for `portaft merge` and `portaft chat`.

A run leaves a peft adapter (or, `finetune: full`, a whole model), the tokenizer with
the chat template it trained with, and `portaft_recipe.yaml`. A `checkpoint-N` folder
inside a finished run reads its recipe and tokenizer from the run folder around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portaft.errors import UserError
from portaft.recipe import Recipe
from portaft.runner.outputs import RECIPE_FILE

ADAPTER_FILE = "adapter_config.json"
TOKENIZER_FILE = "tokenizer_config.json"


@dataclass
class Trained:
    folder: Path
    recipe: Recipe | None  # the effective recipe the run saved, when there is one
    recipe_file: Path | None
    adapter: bool  # a peft adapter; False: a whole model folder
    tokenizer_folder: Path | None  # the run's saved tokenizer (carrying its chat template), else this folder's

    @property
    def trust_remote_code(self) -> bool:
        return bool(self.recipe and self.recipe.model.trust_remote_code)

    @property
    def trained_dtype(self) -> str:
        """The dtype the run held the weights in (the effective recipe's model.dtype);
        "auto" (the checkpoint's own) when no recipe says."""
        return self.recipe.model.dtype if self.recipe else "auto"

    @property
    def system(self) -> str | None:
        return self.recipe.system if self.recipe else None


def read_output(folder: str | Path) -> Trained:
    """What a folder holds: a portaft run output, a checkpoint of one, a peft adapter or a model.

    Raises UserError when it is none of these."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder. Give the train.output_dir of a finished portaft run.")
    run_folder = folder
    if not (folder / RECIPE_FILE).is_file() and folder.name.startswith("checkpoint-") and (folder.parent / RECIPE_FILE).is_file():
        run_folder = folder.parent  # a Trainer checkpoint: the run's recipe and tokenizer are one level up
    recipe_file = run_folder / RECIPE_FILE if (run_folder / RECIPE_FILE).is_file() else None
    recipe = _read_recipe(recipe_file) if recipe_file else None
    adapter = (folder / ADAPTER_FILE).is_file()
    if not adapter and not (folder / "config.json").is_file():
        if recipe is None:
            raise UserError(f"{folder}: not a portaft run output (no {RECIPE_FILE}, no {ADAPTER_FILE}, no config.json). "
                            "Give the train.output_dir of a finished run (or one of its checkpoint-N folders).")
        raise UserError(f"{folder}: holds no adapter ({ADAPTER_FILE}) and no model (config.json): the run has not "
                        "saved one. Let it finish, or give one of its checkpoint-N folders.")
    # the run saves its tokenizer, with the template it trained with, when it ends; a
    # checkpoint's own tokenizer was saved before the run gave it that template
    tokenizer_folder = next((f for f in (run_folder, folder) if (f / TOKENIZER_FILE).is_file()), None)
    return Trained(folder, recipe, recipe_file, adapter, tokenizer_folder)


def _read_recipe(path: Path) -> Recipe:
    """The saved effective recipe. Validated by its schema only: the run's data files and
    plugin backends need not exist where the output is used."""
    import yaml
    from pydantic import ValidationError

    try:
        return Recipe.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as exc:
        raise UserError(f"{path}: not a recipe this portaft can read ({exc}). Was it written by portaft?") from None


def base_model(trained: Trained, override: str | None = None) -> tuple[str, str]:
    """(base model of an adapter, where that name came from): --base, else the recipe's
    model.name_or_path, else adapter_config.json's base_model_name_or_path."""
    import json

    if override:
        return override, "--base"
    if trained.recipe is not None:
        return trained.recipe.model.name_or_path, f"model.name_or_path in {trained.recipe_file}"
    config = json.loads((trained.folder / ADAPTER_FILE).read_text(encoding="utf-8"))
    name = config.get("base_model_name_or_path")
    if not name:
        raise UserError(f"{trained.folder / ADAPTER_FILE} names no base_model_name_or_path: pass --base PATH.")
    return name, f"base_model_name_or_path in {trained.folder / ADAPTER_FILE}"


BASE_HINT = ("A relative path is relative to the folder the run was started in: run from there, "
             "or pass --base with the base model's folder.")


def load_causal_lm(name: str, where: str, dtype: str, trust_remote_code: bool, hint: str = BASE_HINT) -> Any:
    """AutoModelForCausalLM.from_pretrained, its failure told as the user's to fix."""
    import torch
    from transformers import AutoModelForCausalLM

    from portaft.compat import model_dtype_kwargs

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    path = Path(name).expanduser()
    if (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1) and not path.is_dir():
        raise UserError(f"the model {name!r} ({where}) is not here: no such folder. {hint}")
    try:
        return AutoModelForCausalLM.from_pretrained(str(path) if path.is_dir() else name, trust_remote_code=trust_remote_code,
                                                    **model_dtype_kwargs(torch_dtype))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model {name!r} ({where}): {exc}\n{hint}".rstrip()) from None


def load_model(trained: Trained, dtype: str, base: str | None = None) -> Any:
    """The trained model: base + adapter (a peft PeftModel), or the whole model folder."""
    if not trained.adapter:
        return load_causal_lm(str(trained.folder), str(trained.folder), dtype, trained.trust_remote_code, hint="")
    from peft import PeftModel

    name, where = base_model(trained, base)
    model = load_causal_lm(name, where, dtype, trained.trust_remote_code)
    try:
        return PeftModel.from_pretrained(model, str(trained.folder))
    except TypeError as exc:  # an older peft refuses config keys a newer one wrote
        import peft

        raise UserError(f"{trained.folder / ADAPTER_FILE}: this peft ({peft.__version__}) cannot read it ({exc}); "
                        "it was saved by a newer peft. Install the peft the run used (portaft_run.json lists "
                        "its versions).") from None


def load_tokenizer(trained: Trained, base: str | None = None) -> Any:
    """The tokenizer the run saved (carrying its chat template); else the base model's."""
    from transformers import AutoTokenizer

    if trained.tokenizer_folder is not None:
        name, where = str(trained.tokenizer_folder), str(trained.tokenizer_folder)
    else:
        name, where = base_model(trained, base)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trained.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer from {name!r} ({where}): {exc}") from None


def chat_template(tokenizer: Any) -> str | None:
    """The tokenizer's chat template: for a run's saved tokenizer, the one it trained with."""
    own = getattr(tokenizer, "chat_template", None)
    return own.get("default") if isinstance(own, dict) else own  # several named templates: "default" is the chat one
