"""bench/scale_1gpu.py on the CPU (a smoke run: its timings mean nothing here; the GPU runs are the lead's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_scale_benchmark_times_the_plain_run_and_records_an_engine_this_machine_refuses(tiny_model, tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "scale_1gpu.py"), "--model", str(tiny_model),
                           "--engines", "plain,fsdp", "--steps", "3", "--warmup", "1", "--samples", "64",
                           "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    [written] = tmp_path.glob("scale-1gpu-*.json")
    results = json.loads(written.read_text(encoding="utf-8"))["results"]
    plain = results["plain"]
    assert len(plain["losses"]) == 3 and plain["measured_steps"] == 2 and plain["tokens_per_second"] > 0
    # on the CPU, FSDP is refused with the reason (never trained unsharded), and the table says so
    assert results["fsdp"]["failed"].startswith("portaft: error:")
    assert "train.fsdp: FSDP does not run on the CPU here" in results["fsdp"]["failed"]
    table = written.with_suffix(".md").read_text(encoding="utf-8")
    assert "| plain |" in table and "| fsdp | failed: portaft: error:" in table
