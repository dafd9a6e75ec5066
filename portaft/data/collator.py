"""portaft's seq2seq collator: the piece openMind does not ship.

It produces exactly what `transformers.DataCollatorForSeq2Seq(tokenizer,
padding=True, label_pad_token_id=-100)` produces (tests compare them): pad every
feature to the longest in the batch, on the tokenizer's padding side, input_ids
with the pad token, attention_mask with 0 and labels with -100.
"""

from __future__ import annotations

from typing import Any

import torch


class Seq2SeqCollator:
    def __init__(self, tokenizer: Any, label_pad_token_id: int = -100, pad_to_multiple_of: int | None = None):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; portaft sets pad = eos before collating")
        self.pad_values = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": label_pad_token_id}
        self.left = tokenizer.padding_side == "left"
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        batch = {}
        for key, pad in self.pad_values.items():
            if key not in features[0]:
                continue
            rows = []
            for feature in features:
                values = list(feature[key])
                filler = [pad] * (longest - len(values))
                rows.append(filler + values if self.left else values + filler)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch
