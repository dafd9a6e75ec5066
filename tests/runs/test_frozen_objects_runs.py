"""Set-up's long-lived objects are kept out of Python's full garbage collections during
training (a collection walks them all, ~300 ms a time on a large model), and given back after."""

import gc

import pytest

import portaft
from portaft.speed_ups.frozen_objects import FrozenLongLivedObjects


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
    note = "speed-up frozen_objects: the objects alive after set-up and the first 3 steps frozen"
    assert any(n.startswith(note) for n in result.notes)
    assert any(line.startswith(f"portaft: {note}") for line in lines)


def test_a_run_that_fails_still_gives_the_collector_back(recipe_dict, monkeypatch):
    def fail(self, args, state, control, **kwargs):
        raise RuntimeError("a step that fails")

    monkeypatch.setattr(FrozenLongLivedObjects, "on_step_end", fail)
    with pytest.raises(RuntimeError, match="a step that fails"):
        portaft.run(recipe_dict, backend="cpu", echo=lambda _: None)
    assert gc.get_freeze_count() == 0
