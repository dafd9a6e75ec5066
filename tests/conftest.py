import json
from pathlib import Path

import pytest
import yaml

from portaft import plugins
from portaft.testing import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
TIERS = {"runs": "run", "contract": "contract", "bench": "bench", "gpu": "gpu"}  # tests/unit: no marker


def pytest_collection_modifyitems(items):
    """Each tier's folder marks its tests (`-m "not run"` and the like select by tier)."""
    for item in items:
        tier = Path(item.path).relative_to(REPO / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(TIERS[tier])


@pytest.fixture(autouse=True, scope="session")
def compile_cache_of_the_tests(tmp_path_factory):
    """Compiled layers keep torch's compile artifacts in the user's cache folder; not the tests'."""
    import os

    os.environ["PORTAFT_CACHE"] = str(tmp_path_factory.mktemp("portaft-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-deepseek")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Every test starts from freshly loaded entry points."""
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


IDENTITY_QUESTIONS = ("你是谁？", "你叫什么？", "介绍一下你自己。", "Who are you?")


def identity_recipe(folder: Path, model: Path, **train) -> dict:
    """A real self-identity run of the tiny model: its data written into `folder`, the
    recipe returned (train: what every such test shares, updated by `train`)."""
    data = folder / "identity.jsonl"
    rows = [{"conversation": [{"system": "你是黄大力的智能助手。", "input": q, "output": "我是黄大力的智能助手。"}]}
            for q in IDENTITY_QUESTIONS]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return {
        "model": {"name_or_path": str(model)},
        "data": [{"path": str(data)}],
        "template": "deepseek",
        "max_length": 64,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "report_to": "none",
                  "seed": 7, **train},
        "eval_prompts": ["你是谁？"],
    }


@pytest.fixture
def conversation_file(tmp_path) -> Path:
    path = tmp_path / "identity.jsonl"
    rows = [
        {"conversation": [{"system": "你是黄大力的智能助手。", "input": "你是谁？", "output": "我是黄大力的智能助手。"}]},
        {"conversation": [{"input": "Who made you?", "output": "Huang Dali made me."},
                          {"input": "What can you do?", "output": "Answer questions."}]},
    ] * 4
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def varied_file(tmp_path) -> Path:
    """Conversations of varied lengths, some of two turns (packing's tests)."""
    path = tmp_path / "varied.jsonl"
    rows = [{"conversation": [{"input": "问题" * (1 + i % 5), "output": "回答" * (1 + (i * 3) % 7)}]
             + [{"input": "再问", "output": "再答" * (1 + i % 3)}] * (i % 2)} for i in range(12)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def recipe_dict(tiny_model, conversation_file, tmp_path) -> dict:
    return {
        "model": {"name_or_path": str(tiny_model)},
        "data": [{"path": str(conversation_file)}],
        "template": "deepseek",
        "max_length": 64,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "report_to": "none",
            "seed": 1,
        },
    }


@pytest.fixture
def write_recipe(tmp_path):
    def write(data: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        return path

    return write
