"""portaft run --nproc N: N processes through torchrun, DDP over gloo on the CPU."""


import pytest



@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_a_bad_process_count_is_a_user_error(recipe_dict, write_recipe, nproc):
    from portaft.cli import main

    assert main(["run", str(write_recipe(recipe_dict)), "--nproc", nproc]) == 2


def test_one_process_seeing_several_gpus_trains_on_one_and_says_how_to_use_all():
    """transformers would wrap the model in nn.DataParallel, which cannot split a flattened batch."""
    import types

    from portaft.runner.world import _one_device_per_process

    args = types.SimpleNamespace(n_gpu=2, device="cuda:0")
    (note,) = _one_device_per_process(args, processes=1)
    assert args._n_gpu == 1 and "portaft run --nproc 2" in note and "cuda:0" in note
    for n_gpu, processes in ((1, 1), (0, 1), (1, 2)):
        assert _one_device_per_process(types.SimpleNamespace(n_gpu=n_gpu, device="cuda:0"), processes) == []
