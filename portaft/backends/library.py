"""The classes a backend trains with: transformers' own, or a vendor's subclasses of them.

When portaft draws the training batches itself (packing; batches shared out by tokens),
the Trainer it trains with is the library's Trainer with one method changed:
`get_train_dataloader`, transformers' documented place for it, builds the loader from
portaft's batch sampler. Everything else is the library's own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Library:
    name: str
    auto_tokenizer: Any
    auto_model: Any
    training_arguments: Any
    trainer: Any
    seq2seq_collator: Any = None  # None: the library has none, portaft supplies its own
    local_only: bool = False  # the library sends hub ids to its own hub: accept local folders only


def transformers_library() -> Library:
    import transformers

    return Library(f"transformers {transformers.__version__}", transformers.AutoTokenizer,
                   transformers.AutoModelForCausalLM, transformers.TrainingArguments, transformers.Trainer,
                   seq2seq_collator=transformers.DataCollatorForSeq2Seq)


def drawing_batches_from_a_sampler(trainer_class: type) -> type:
    """`trainer_class` whose training batches come from the `batch_sampler` given to it."""

    class TrainerWithPortaftBatches(trainer_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, batch_sampler: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.portaft_batch_sampler = batch_sampler

        def get_train_dataloader(self) -> Any:
            from torch.utils.data import DataLoader

            loader = DataLoader(self.train_dataset, batch_sampler=self.portaft_batch_sampler,
                                collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                                pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

    TrainerWithPortaftBatches.__qualname__ = TrainerWithPortaftBatches.__name__ = f"{trainer_class.__name__}WithPortaftBatches"
    return TrainerWithPortaftBatches
