"""Set-up's long-lived objects are kept out of Python's full garbage collections during
training (a collection walks them all, ~300 ms a time on a large model), and given back after."""

import gc

import pytest

import portaft
from portaft.callbacks import FrozenLongLivedObjects


def _freeze_counts_at_step_ends(monkeypatch) -> dict[int, int]:
    seen: dict[int, int] = {}
    original = FrozenLongLivedObjects.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        seen[state.global_step] = gc.get_freeze_count()

    monkeypatch.setattr(FrozenLongLivedObjects, "on_step_end", on_step_end)
    return seen


def test_training_runs_with_set_up_frozen_and_the_collector_is_given_back(recipe_dict, monkeypatch):
    assert gc.get_freeze_count() == 0
    seen = _freeze_counts_at_step_ends(monkeypatch)
    lines: list[str] = []
    result = portaft.run(recipe_dict, backend="cpu", echo=lines.append)
    assert sorted(seen) == [1, 2, 3, 4]
    assert all(count > 10_000 for count in seen.values())  # torch, transformers, the model: not a handful
    assert seen[4] <= seen[3]  # frozen again up to step 3 only (frozen objects are still freed by reference counts)
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    assert any(note.startswith("host: the objects alive after set-up and the first 3 steps frozen") for note in result.notes)
    assert any(line.startswith("portaft: host: the objects alive after set-up") for line in lines)


def test_a_run_that_fails_still_gives_the_collector_back(recipe_dict, monkeypatch):
    def fail(self, args, state, control, **kwargs):
        raise RuntimeError("a step that fails")

    monkeypatch.setattr(FrozenLongLivedObjects, "on_step_end", fail)
    with pytest.raises(RuntimeError, match="a step that fails"):
        portaft.run(recipe_dict, backend="cpu", echo=lambda _: None)
    assert gc.get_freeze_count() == 0


def test_a_process_that_turned_the_collector_off_is_left_alone():
    gc.disable()
    try:
        callback = FrozenLongLivedObjects()
        callback.on_train_begin(None, None, None)
        callback.unfreeze()
        assert not callback.active and gc.get_freeze_count() == 0 and not gc.isenabled()
    finally:
        gc.enable()


def test_objects_frozen_before_the_run_do_not_turn_the_freeze_off():
    """The H200 machine's Python started with 375 objects frozen: the freeze must still happen there."""
    kept = [[] for _ in range(500)]
    gc.freeze()  # what the interpreter (or a caller) froze before
    before = gc.get_freeze_count()
    callback = FrozenLongLivedObjects()
    try:
        kept.append([[] for _ in range(500)])  # set-up's objects, made after that
        callback.on_train_begin(None, None, None)
        assert callback.active and gc.get_freeze_count() >= before + 500
    finally:
        callback.unfreeze()
        gc.unfreeze()
    assert gc.get_freeze_count() == 0  # everything back with the collector (gc cannot unfreeze only some)


def test_a_resumed_run_freezes_after_its_own_first_steps():
    """Layers compile in the first steps this process runs, whatever step it resumed from."""
    import types

    callback = FrozenLongLivedObjects()
    try:
        callback.on_train_begin(None, None, None)
        state = types.SimpleNamespace(global_step=100)
        counts, kept = [], []
        for _ in range(4):
            kept.append([[] for _ in range(500)])  # made in this step and kept, like a compiled graph
            callback.on_step_end(None, state, None)
            counts.append(gc.get_freeze_count())
            state.global_step += 1
        assert counts[0] < counts[1] < counts[2]  # frozen again after each of the first 3 steps
        assert counts[3] == counts[2]  # not after the 4th: its 500 lists stay with the collector
    finally:
        callback.unfreeze()
    assert gc.get_freeze_count() == 0
