"""portaft run --nproc N: N processes through torchrun, DDP over gloo on the CPU."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from portaft.data.packing import packing_supported


def test_two_processes_on_cpu_train_one_adapter_over_gloo(recipe_dict, write_recipe, tmp_path):
    recipe_dict["train"].update({"max_steps": 3, "save_strategy": "no"})
    recipe = write_recipe(recipe_dict)
    done = subprocess.run([sys.executable, "-m", "portaft", "run", str(recipe), "--nproc", "2", "--backend", "cpu"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "portaft: launching 2 processes on cpu (gloo) with torchrun" in done.stdout
    assert done.stdout.count("portaft: adapter saved in") == 1  # only the first process speaks and writes
    out = tmp_path / "out"
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["processes"] == 2
    assert "train.ddp_backend: unset -> gloo (2 processes on cpu)" in record["notes"]
    assert [e["step"] for e in record["log_history"] if "loss" in e] == [1, 2, 3]
    effective = yaml.safe_load((out / "portaft_recipe.yaml").read_text(encoding="utf-8"))
    assert effective["train"]["ddp_backend"] == "gloo"
    # LoRA trains every adapter weight in every step: DDP need not search for unused ones
    assert effective["train"]["ddp_find_unused_parameters"] is False
    assert (out / "adapter_model.safetensors").is_file()


# under torchrun: portaft through a CPU backend that flattens batches and shares each step
# by tokens; argv[3] "unbalanced" keeps each step's batches as drawn (the same sampler, the
# baseline). Each process writes each forward's samples and tokens.
SHARES_SCRIPT = """
import json, os, sys, types
from pathlib import Path

import portaft
from portaft.backends import TransformersBackend
from portaft.data import shares
from portaft.plugins import get_plugins
from portaft.speed_ups import balanced_shares, padding_free
from transformers import TrainerCallback

if sys.argv[3] == "unbalanced":
    shares.shares_by_tokens = lambda batches, lengths: [list(batch) for batch in batches]
seen = []


class FlatCpu(TransformersBackend):
    name, device_type, priority, distributed_backend = "flat-cpu", "cpu", 1, "gloo"
    SPEED_UPS = (*TransformersBackend.SPEED_UPS, padding_free, balanced_shares)

    def unavailable_reason(self):
        return None


class Shares(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
            [int((kwargs["position_ids"] == 0).sum()), int(kwargs["input_ids"].numel())]), with_kwargs=True)


@portaft.hookimpl
def register_backends(register):
    register(FlatCpu())


@portaft.hookimpl
def register_callbacks(register):
    register(Shares())


get_plugins().register(types.SimpleNamespace(register_backends=register_backends,
                                             register_callbacks=register_callbacks), name="test-shares")
portaft.run(sys.argv[1], backend="flat-cpu")
Path(sys.argv[2], f"{sys.argv[3]}-rank{os.environ['RANK']}.json").write_text(json.dumps(seen))
"""


@pytest.mark.skipif(packing_supported() is not None, reason="batches are flattened only where transformers reads "
                    "packed position_ids")
def test_two_processes_share_each_step_by_tokens_and_train_the_same_losses(recipe_dict, write_recipe, tmp_path):
    """balanced_shares on 2 CPU processes with flattened batches: every step trains the samples
    the same sampler draws without sharing (2 x 4 here), shared out so that the busiest process
    gets fewer tokens, and the losses are the unshared run's (the Trainer divides by the step's
    tokens over both processes). The note says so."""
    data = tmp_path / "lengths.jsonl"
    long, short = "one two three four five six seven eight nine ten " * 3, "yes"
    rows = [{"conversation": [{"input": "say", "output": long if i % 4 == 0 else short}]} for i in range(16)]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recipe_dict["data"] = [{"path": str(data)}]
    script = tmp_path / "shares.py"
    script.write_text(SHARES_SCRIPT, encoding="utf-8")
    runs = {}
    for how in ("unbalanced", "balanced"):
        recipe_dict["train"].update({"max_steps": 3, "save_strategy": "no", "output_dir": str(tmp_path / how)})
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                               str(write_recipe(recipe_dict)), str(tmp_path), how], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        record = json.loads((tmp_path / how / "portaft_run.json").read_text(encoding="utf-8"))
        runs[how] = ([json.loads((tmp_path / f"{how}-rank{rank}.json").read_text()) for rank in (0, 1)],
                     [e["loss"] for e in record["log_history"] if "loss" in e], record["notes"])
    (before, losses_before, notes_before), (after, losses_after, notes_after) = runs["unbalanced"], runs["balanced"]
    note = ("speed-up balanced_shares: each step's samples, drawn in a seeded order, shared out between the 2 "
            "processes by their tokens (the same samples a step, so the same loss; a step waits for its busiest process)")
    assert note in notes_after and note in notes_before  # both draw from the speed-up's sampler
    assert len(losses_after) == 3 and losses_after == pytest.approx(losses_before, rel=1e-5)
    for step in range(3):
        (samples_0, tokens_0), (samples_1, tokens_1) = after[0][step], after[1][step]
        assert samples_0 + samples_1 == 8 and tokens_0 + tokens_1 == before[0][step][1] + before[1][step][1]
        assert max(tokens_0, tokens_1) <= max(before[0][step][1], before[1][step][1])
    # the drawn batches were uneven in some step (4 samples each), the shares not
    assert any(max(after[0][step][1], after[1][step][1]) < max(before[0][step][1], before[1][step][1])
               for step in range(3)), (before, after)


# a user's script under torchrun: what each process finds when portaft.run() returns, and
# whether the process group is still there at exit (an exit hook registered before run()
# runs after portaft's: atexit calls the last registered first). Each process writes its own
# file: lines the two print to one stdout can interleave.
SCRIPT_USING_RUN = """
import atexit, json, os, sys
from pathlib import Path

import torch.distributed as dist

import portaft

found, out, said = {}, Path(sys.argv[2]), Path(sys.argv[3], f"rank{os.environ['RANK']}.json")


def at_exit():
    found["group alive at exit"] = dist.is_initialized()
    said.write_text(json.dumps(found))


atexit.register(at_exit)
portaft.run(sys.argv[1], backend="cpu")
found["output complete on return"] = (out / "portaft_run.json").is_file()
found["group usable after run"] = dist.is_initialized() and dist.get_world_size() == 2
"""


def test_every_process_returns_from_run_once_the_output_is_written_and_leaves_the_group_at_exit(
        recipe_dict, write_recipe, tmp_path):
    """The first process writes the adapter and record after training (and answers the
    eval prompts): the others wait for it, so a script may read the output on any process.
    The process group stays usable after run() and is left at exit, not torn down by the
    interpreter's shutdown (where a process once died with SIGABRT in CI)."""
    out = tmp_path / "out"
    recipe_dict["train"].update({"max_steps": 2, "save_strategy": "no", "output_dir": str(out)})
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_USING_RUN, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(write_recipe(recipe_dict)), str(out), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = {"output complete on return": True, "group usable after run": True, "group alive at exit": False}
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected, rank
