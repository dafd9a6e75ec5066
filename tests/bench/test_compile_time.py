"""bench/compile_time.py: the decoder layers' compile timed in a fresh process with an empty cache."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_compile_is_timed_and_counted_and_written(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "compile_time.py"), "--rounds", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    [result] = json.loads((tmp_path / "compile-time.json").read_text())["rounds"]["this"]
    assert result["compile_s"] > result["second_length_s"] > 0  # the first pass compiled, the second did not
    assert (result["graphs"], result["aot_traces"]) == (1, 1)  # one graph for every layer, traced once
    assert "| this (" in (tmp_path / "compile-time.md").read_text()
