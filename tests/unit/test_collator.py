"""portaft's collator equals transformers.DataCollatorForSeq2Seq, feature for feature."""

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from portaft.data import Seq2SeqCollator


def features():
    return [
        {"input_ids": [5, 6, 7, 8, 9], "attention_mask": [1] * 5, "labels": [-100, -100, 7, 8, 9]},
        {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]},
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [1, 2, 3]},
    ]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("multiple", [None, 8])
def test_collator_equals_transformers(tokenizer, side, multiple):
    tokenizer.padding_side = side
    try:
        ours = Seq2SeqCollator(tokenizer, pad_to_multiple_of=multiple)(features())
        theirs = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100,
                                        pad_to_multiple_of=multiple, return_tensors="pt")(features())
    finally:
        tokenizer.padding_side = "right"
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key


def test_collator_pads_with_pad_token_and_masks_labels(tokenizer):
    batch = Seq2SeqCollator(tokenizer)(features())
    assert batch["input_ids"][1].tolist() == [5, 6] + [tokenizer.pad_token_id] * 3
    assert batch["labels"][1].tolist() == [-100, 6, -100, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0, 0]
