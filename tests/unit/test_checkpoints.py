"""Checkpoints are complete or ignored; resume continues the same run exactly, or refuses."""


import torch


def test_the_loss_watch_reads_the_loss_only_when_the_trainer_logs_saves_or_stops():
    from types import SimpleNamespace

    from portaft.runner.watch import LossWatch

    class Model(torch.nn.Module):  # returns the loss it is given, as a causal LM returns its own
        def forward(self, loss):
            return {"loss": loss}

    model, state = Model(), SimpleNamespace(global_step=0, max_steps=10)
    losses = iter([torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(2.0), torch.tensor(float("inf"))])
    watch = LossWatch(model)
    watch.on_train_begin(None, state, None)
    model.eval()
    model(torch.tensor(float("nan")))  # an evaluation or generation forward is not training
    model.train()

    def step(**flags):
        model(next(losses))
        state.global_step += 1
        control = SimpleNamespace(**{**dict.fromkeys(("should_log", "should_save", "should_evaluate",
                                                      "should_training_stop"), False), **flags})
        watch.on_step_end(None, state, control)
        return control

    step()
    control = step()  # the NaN: nothing logs or saves here, so nothing is read
    assert watch.bad_step is None and not control.should_training_stop
    step()
    control = step(should_save=True)  # read here: the first bad step, not this one
    assert (watch.bad_step, control.should_save, control.should_training_stop) == (2, False, True)
    assert watch.bad_value != watch.bad_value  # NaN, the first bad loss, not the later inf
    watch.close()
    assert not model._forward_hooks


def test_copying_batches_without_waiting_is_not_a_difference_for_resume(recipe_dict):
    """cuda's queue_ahead adds train.accelerator_config.non_blocking to the effective recipe:
    a checkpoint written without it (or on another backend) still resumes; other accelerator
    settings, which change the batches, still count."""
    from portaft import load_recipe
    from portaft.runner.checkpoints import training_identity

    def identity(accelerator):
        train = {**recipe_dict["train"], **({"accelerator_config": accelerator} if accelerator else {})}
        return training_identity(load_recipe({**recipe_dict, "train": train}))

    assert identity({"non_blocking": True}) == identity(None)
    assert identity({"non_blocking": True, "split_batches": True}) != identity(None)
