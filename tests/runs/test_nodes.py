"""portaft run --nnodes 2: two "nodes" on this machine, each a launch of its own, over gloo."""

import json
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_one_adapter_and_log_each_step_once(recipe_dict, write_recipe, tmp_path):
    recipe_dict["train"].update({"max_steps": 2, "save_strategy": "no"})
    recipe, port = write_recipe(recipe_dict), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launches = [subprocess.Popen([sys.executable, "-m", "portaft", "run", str(recipe), "--backend", "cpu",
                                  "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                                  "--master-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for rank in (1, 0)]
    said = [launch.communicate(timeout=600) for launch in launches]
    for launch, (out, err) in zip(launches, said):
        assert launch.returncode == 0, out[-3000:] + err[-3000:]
    (out_1, _), (out_0, _) = said
    assert "portaft: launching 1 process on node 0 of 2 (node 0 at 127.0.0.1:" in out_0
    assert "portaft: launching 1 process on node 1 of 2" in out_1
    # the run's first process (node 0) speaks and writes; node 1 trains in silence
    steps = [line.split()[1] for line in (out_0 + out_1).splitlines() if line.startswith("step ") and "loss" in line
             and "mean" not in line]
    assert steps == ["1/2", "2/2"]
    assert (out_0 + out_1).count("portaft: adapter saved in") == 1
    out = tmp_path / "out"
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["processes"] == 2
    assert [e["step"] for e in record["log_history"] if "loss" in e] == [1, 2]
    assert (out / "adapter_model.safetensors").is_file()
