"""bench/start_profile.py: a wall-clock profile of a real `portaft` command, and its timeline."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_a_command_is_profiled_and_its_stretches_printed(tmp_path):
    out = tmp_path / "samples.json"
    done = subprocess.run([sys.executable, str(BENCH / "start_profile.py"), "--out", str(out), "--every", "0.01",
                           "--", "backends", "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {b["name"] for b in json.loads(done.stdout)} >= {"cpu"}  # the command itself ran and printed
    record = json.loads(out.read_text())
    assert record["total_s"] > 0 and record["timeline"]
    # importing portaft takes seconds: the profile must have seen the package's own import
    assert any("portaft/__init__.py" in name for name, _ in record["inclusive"])
    shown = subprocess.run([sys.executable, str(BENCH / "start_profile.py"), "--show", str(out), "--shortest", "0"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip().splitlines()[-1].startswith("total ")


def test_torch_compile_phases_are_read_where_the_process_compiled():
    sys.path.insert(0, str(BENCH))
    import start_profile
    import torch

    compiled = torch.compile(lambda x: (x * 2).sin(), backend="eager")
    compiled(torch.ones(4))
    phases = start_profile.compile_times()
    # dynamo's own timing of each compile, the one just made last (the suite may have compiled before)
    assert phases["_compile.compile_inner"][-1] > 0
