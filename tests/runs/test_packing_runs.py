"""Packed and padding-free runs train the losses of padded batches of the same samples."""

import pytest

import portaft
import portaft.data
from helpers import tokenizer_of
from portaft.data import Seq2SeqCollator
from portaft.data.packing import packing_supported


def test_a_packed_run_logs_the_same_losses_as_padding_the_same_batches(recipe_dict, varied_file, monkeypatch):
    recipe = {**recipe_dict, "data": [{"path": str(varied_file)}], "packing": True,
              "train": {**recipe_dict["train"], "max_steps": 5, "save_strategy": "no"}}
    packed = portaft.run({**recipe, "train": {**recipe["train"], "output_dir": recipe["train"]["output_dir"] + "-p"}},
                         backend="cpu", echo=lambda _: None)
    # the same run with the same token-budget batches, padded instead of flattened
    monkeypatch.setattr("portaft.data.packing.flattening_collator", lambda *_: Seq2SeqCollator(tokenizer_of(recipe)))
    padded = portaft.run(recipe, backend="cpu", echo=lambda _: None)
    packed_losses = [e["loss"] for e in packed.log_history if "loss" in e]
    padded_losses = [e["loss"] for e in padded.log_history if "loss" in e]
    assert len(packed_losses) == 5
    assert packed_losses == pytest.approx(padded_losses, rel=1e-5)
    assert any(n.startswith("packing: 12 samples in ") for n in packed.notes)


@pytest.mark.skipif(packing_supported() is None, reason="this transformers reads packed position_ids itself")
def test_where_transformers_cannot_read_packed_positions_a_note_says_masks_are_explicit(recipe_dict):
    result = portaft.run({**recipe_dict, "packing": True, "train": {**recipe_dict["train"], "max_steps": 1}},
                         backend="cpu", echo=lambda _: None)
    assert any("each packed batch carries an explicit block-diagonal attention mask" in n for n in result.notes)


def test_padding_free_batches_train_exactly_like_padded_ones(recipe_dict, monkeypatch):
    """What the cuda backend does by default (its padding_free speed-up): the same samples per
    batch, flattened."""
    from portaft.backends.cpu import CpuBackend
    from portaft.data.packing import packing_supported
    from portaft.speed_ups import padding_free

    if packing_supported() is not None:
        pytest.skip("this transformers cannot read packed position_ids: padding-free stays off")
    recipe_dict["train"]["max_steps"] = 5
    padded = portaft.run({**recipe_dict, "train": {**recipe_dict["train"], "output_dir": recipe_dict["train"]["output_dir"] + "-padded"}},
                         backend="cpu", echo=lambda _: None)
    monkeypatch.setattr(CpuBackend, "SPEED_UPS", (*CpuBackend.SPEED_UPS, padding_free))
    lines = []
    flat = portaft.run(recipe_dict, backend="cpu", echo=lines.append)
    assert "portaft: speed-up padding_free: each batch's samples flattened into one row with their own position ids: " \
           "no pad tokens computed, the same loss as padded" in lines
    expected = [e["loss"] for e in padded.log_history if "loss" in e]
    got = [e["loss"] for e in flat.log_history if "loss" in e]
    assert len(got) == 5 and got == pytest.approx(expected, rel=1e-5)
