"""The recipe's schema: one YAML file that says what to fine-tune, on what data, how.

Every section is a pydantic model that forbids unknown keys; `train:` is checked against
the installed transformers' TrainingArguments (`training_arguments_schema`).
"""

from __future__ import annotations

import functools
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name_or_path: str = Field(description="Local folder or hub id of the base model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype when loaded; auto = the backend's choice for its hardware."
    )
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="Attention kernels; auto = transformers' default. Backends map what they lack."
    )


class DataSource(_Section):
    path: str = Field(description="A .json/.jsonl/.parquet/.csv file, a folder of them, or a glob.")
    format: str = Field(
        "auto", description="auto = detect from the records' keys; or xtuner, alpaca, sharegpt, openai, swift, "
        "text, a plugin's."
    )
    weight: float | None = Field(None, gt=0, description="Use round(weight x size) samples of this source.")
    samples: int | None = Field(None, gt=0, description="Use exactly this many samples of this source.")
    formatting: Literal["alpaca", "sharegpt"] | None = Field(
        None, description="Column mapping as in LLaMA-Factory's dataset_info.json: alpaca or sharegpt "
        "(replaces format).")
    columns: dict[str, str] | None = Field(
        None, description="dataset_info.json `columns`: portaft's name -> your column (prompt, query, response, "
        "system, history, messages, tools, chosen, rejected, kto_tag, images, ...).")
    tags: dict[str, str] | None = Field(
        None, description="dataset_info.json `tags` of sharegpt data: role_tag, content_tag, user_tag, assistant_tag, "
        "system_tag, observation_tag, function_tag.")
    ranking: bool = Field(False, description="dataset_info.json `ranking`: true marks preference (DPO) data.")
    dataset_info: str | None = Field(
        None, description="A LLaMA-Factory dataset_info.json; with `name`, its entry gives path, formatting, "
        "columns, tags.")
    name: str | None = Field(None, description="The dataset_info.json entry to read.")
    val_size: int | float | None = Field(
        None, gt=0, description="Hold out this share of the source for evaluation: a fraction below 1 or a count "
        "(replaces the recipe's val_size for this source)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_dataset_info(cls, data: Any) -> Any:
        """{dataset_info: FILE, name: ENTRY}: the entry's file (relative to FILE's folder) and
        settings; what the source itself says wins."""
        if isinstance(data, dict) and data.get("dataset_info") is not None:
            from portaft.data.dataset_info import entry_settings

            if "path" in data:
                raise ValueError("give either path or dataset_info + name, not both")
            data = {**entry_settings(data["dataset_info"], data.get("name")), **data}
        return data

    @model_validator(mode="after")
    def _one_amount(self) -> "DataSource":
        if self.weight is not None and self.samples is not None:
            raise ValueError("set either weight or samples for a source, not both")
        if self.formatting is None and (self.columns or self.tags):
            raise ValueError("columns and tags need formatting: alpaca or sharegpt")
        if self.formatting is not None:
            from portaft.data.dataset_info import mapping_problems

            problems = mapping_problems(self.formatting, self.columns or {}, self.tags or {})
            if problems:
                raise ValueError(" ".join(problems))
        return self

    @field_validator("val_size")
    @classmethod
    def _fraction_or_count(cls, value: int | float | None) -> int | float | None:
        return _fraction_or_count(value)


def _fraction_or_count(value: int | float | None) -> int | float | None:
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise ValueError("give a fraction below 1 (0.1) or a whole count of samples (200)")
        return int(value)
    return value


class LoraSection(_Section):
    r: int = Field(8, gt=0, description="Rank: higher = more capacity, more memory.")
    alpha: float = Field(16, gt=0, description="Scale of the update is alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (peft), a little slower, often better.")


class ChatTurn(_Section):
    role: Literal["system", "user", "assistant"]
    content: str


class QuantizationSection(_Section):
    bits: Literal[4, 8] = Field(4, description="4 = QLoRA (NF4/FP4 weights), 8 = LLM.int8 weights.")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's.")
    double_quant: bool = Field(True, description="Also quantize the quantization constants (saves ~0.4 bit/weight).")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype the 4-bit matmuls compute in.")
    storage: Literal["auto", "uint8", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the 4-bit weights are stored in (bnb_4bit_quant_storage); auto = uint8, or the "
        "compute dtype under FSDP or ZeRO-3, which shard only float tensors.")


class Recipe(_Section):
    backend: str = Field("auto", description="cpu, cuda, npu, a plugin's backend, or auto.")
    device: Literal["auto", "cpu"] = Field(
        "auto", description="auto: the backend's own hardware; cpu: the backend's library code on the CPU "
        "(e.g. the npu backend's openMind path on a machine without an NPU)."
    )
    model: ModelSection
    data: list[DataSource] = Field(min_length=1)
    template: str = Field(
        "auto", description="Chat template: auto, tokenizer (its own chat_template), or a registered name."
    )
    system: str | None = Field(None, description="System prompt for every conversation (replaces the data's).")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant", description="What the loss trains: every assistant reply, the last one, or all text."
    )
    max_length: int = Field(1024, gt=0, description="Samples longer than this are truncated (and counted).")
    packing: bool = Field(False, description="Padding-free batches filled to a token budget.")
    packing_tokens: int | None = Field(
        None, gt=0, description="Tokens per packed batch; default per_device_train_batch_size x mean sample length."
    )
    skip_bad_samples: bool = Field(False, description="Count and skip bad records instead of stopping.")
    plan: Literal["auto", "as_written"] = Field(
        "auto", description="auto: the backend chooses the micro-batch, accumulation and gradient checkpointing "
        "for its device's memory, keeping the effective batch and every step's loss; as_written: exactly the "
        "recipe's train: settings."
    )
    speed_ups: dict[str, bool] = Field(
        default_factory=dict, description="A speed-up turned off by name (NAME: false), as the run's notes name it."
    )
    val_size: int | float | None = Field(
        None, gt=0, description="Hold out this share of every data source for evaluation (eval_loss): a fraction "
        "below 1 (0.1) or a count of samples per source (200); fixed by train.seed."
    )
    eval_data: list[DataSource] = Field(
        default_factory=list, description="Sources to evaluate on (eval_loss), read like data: and never trained on."
    )
    finetune: Literal["lora", "full"] = Field(
        "lora", description="lora: train an adapter (the lora section); full: update every weight of the model."
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    quantization: QuantizationSection | None = Field(
        None, description="Load the frozen base quantized through bitsandbytes (QLoRA); CUDA only."
    )
    train: dict[str, Any] = Field(description="transformers TrainingArguments, by their own names.")
    eval_prompts: list[str | list[ChatTurn]] = Field(
        default_factory=list, description="Questions answered greedily before and after training: a string, or a "
        "conversation (a list of {role, content} turns ending with the user's) for multi-turn behaviour."
    )
    eval_max_new_tokens: int = Field(
        48, gt=0, description="Longest answer to an eval prompt, in tokens; an answer also ends at the template's "
        "end-of-turn token."
    )
    eval_every: int | None = Field(
        None, gt=0, description="Also answer eval_prompts every this many optimizer steps while training."
    )
    resume: Literal["auto", True, False] = Field(
        "auto", description="auto: continue from the newest complete checkpoint in train.output_dir if there is "
        "one; true: insist on one; false: start from step 0 (a non-empty output_dir needs overwrite: true)."
    )
    overwrite: bool = Field(
        False, description="With resume: false, start over in a non-empty output_dir (its checkpoints are removed)."
    )

    @field_validator("val_size")
    @classmethod
    def _fraction_or_count(cls, value: int | float | None) -> int | float | None:
        return _fraction_or_count(value)

    # checks across several keys are in checks.py: they cite the key to change


# --- the `train` section is checked against the installed TrainingArguments ----------

@functools.cache
def training_arguments_schema() -> type[BaseModel]:
    import dataclasses

    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(TrainingArguments):
        if field.init:
            fields[field.name] = (hints[field.name] | None, None)
    if "fsdp" in fields:  # `fsdp: true` (the effective recipe's), which transformers 5 types as a string
        fields["fsdp"] = (fields["fsdp"][0] | bool, None)
    fields["output_dir"] = (str, ...)  # required: portaft never picks a folder silently
    from portaft.compat import REMOVED_TRAINING_ARGUMENTS, RENAMED_TRAINING_ARGUMENTS

    for old, new in RENAMED_TRAINING_ARGUMENTS.items():  # the old name is accepted; resolve() renames it
        if old not in fields and new in fields:
            fields[old] = fields[new]
    for old in REMOVED_TRAINING_ARGUMENTS:  # accepted; resolve() drops it with a note
        fields.setdefault(old, (Any, None))
    return create_model(
        "TrainSection",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )
