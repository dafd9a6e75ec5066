"""Set-up's long-lived objects are kept out of Python's full garbage collections during
training (a collection walks them all, ~300 ms a time on a large model), and given back after."""

import gc


from portaft.speed_ups.frozen_objects import FrozenLongLivedObjects


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


def test_a_resumed_run_freezes_after_its_own_first_steps(monkeypatch):
    """Layers compile in the first steps this process runs, whatever step it resumed from."""
    import types

    freezes_at = []  # the step after which gc.freeze ran (the freeze count itself can drop when
    real_freeze = gc.freeze  # frozen objects of earlier tests are freed, so it is not compared)
    callback = FrozenLongLivedObjects()
    state = types.SimpleNamespace(global_step=100)
    monkeypatch.setattr(gc, "freeze", lambda: (freezes_at.append(state.global_step), real_freeze()))
    try:
        callback.on_train_begin(None, None, None)
        for _ in range(5):
            callback.on_step_end(None, state, None)
            state.global_step += 1
        assert freezes_at == [100, 100, 101, 102]  # at the start, then after this process's first 3 steps
    finally:
        callback.unfreeze()
    assert gc.get_freeze_count() == 0
