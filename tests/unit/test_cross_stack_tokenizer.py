"""A model folder saved by transformers 5 (tokenizer_class TokenizersBackend) loads on the
pinned openMind stack (transformers 4.45), which lacks that class: the npu backend falls
back to the tokenizer.json the folder ships, with a note. In the main environment a class
name this transformers lacks stands in for TokenizersBackend; in the openMind environment
the folder is written exactly as transformers 5 writes it."""

import json
import shutil

import pytest
import transformers
from packaging.version import Version
from transformers import AutoTokenizer

import portaft
from portaft import load_recipe

# tokenizer_config.json as transformers 5.25 saves the tiny model's tokenizer (save_pretrained)
SAVED_BY_TRANSFORMERS_5 = {"backend": "tokenizers", "bos_token": "<｜begin▁of▁sentence｜>",
                           "clean_up_tokenization_spaces": False, "eos_token": "<｜end▁of▁sentence｜>",
                           "is_local": True, "legacy": True, "local_files_only": False, "model_max_length": 1048576,
                           "pad_token": "<｜end▁of▁sentence｜>", "sp_model_kwargs": {},
                           "tokenizer_class": "TokenizersBackend", "unk_token": None}
ON_TRANSFORMERS_5 = Version(transformers.__version__) >= Version("5")


@pytest.fixture
def folder_from_transformers_5(tiny_model, tmp_path):
    folder = tmp_path / "merged-on-cuda"
    shutil.copytree(tiny_model, folder)
    config = dict(SAVED_BY_TRANSFORMERS_5)
    if ON_TRANSFORMERS_5:  # this transformers has TokenizersBackend: name one it lacks, as 4.45 lacks that one
        config["tokenizer_class"] = "TokenizersBackendOfTheFuture"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}",
                                                encoding="utf-8")
    return folder


def test_a_tokenizer_class_this_transformers_lacks_falls_back_to_tokenizer_json(folder_from_transformers_5,
                                                                                tiny_model, recipe_dict,
                                                                                monkeypatch):
    missing = "TokenizersBackendOfTheFuture" if ON_TRANSFORMERS_5 else "TokenizersBackend"
    if ON_TRANSFORMERS_5:  # transformers 5 falls back by itself; act as 4.45 does
        monkeypatch.setattr("portaft.backends.npu.library_falls_back_itself", lambda: False)
    else:
        with pytest.raises(ValueError, match=missing):  # what openMind's transformers alone does with the folder
            AutoTokenizer.from_pretrained(folder_from_transformers_5)
    recipe = load_recipe({**recipe_dict, "device": "cpu", "model": {"name_or_path": str(folder_from_transformers_5)}})
    npu = portaft.get_backend("npu")
    effective, notes = npu.resolve(recipe)
    assert (f"tokenizer: {missing} (tokenizer_config.json) is not in this transformers (transformers "
            f"{transformers.__version__}), so its tokenizer.json loads as PreTrainedTokenizerFast: the same "
            "vocabulary, merges and special tokens") in notes
    loaded, original = npu.load_tokenizer(effective), AutoTokenizer.from_pretrained(tiny_model)
    text = "你是谁？ Who made you? 我是黄大力的智能助手。"
    assert loaded(text)["input_ids"] == original(text)["input_ids"]
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (original.bos_token, original.eos_token,
                                                                      original.eos_token)
    assert loaded.chat_template.startswith("{% for m in messages %}")


def test_a_folder_this_transformers_reads_is_loaded_as_before(tiny_model, recipe_dict):
    recipe = load_recipe({**recipe_dict, "device": "cpu"})
    _, notes = portaft.get_backend("npu").resolve(recipe)
    assert not any(n.startswith("tokenizer: ") for n in notes)
