"""The preprocessing benchmark runs (a smoke run: its timings mean nothing here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_preprocess_benchmark_smoke_run_writes_results_and_matches_plain_token_counts(tiny_model, tmp_path):
    subprocess.run([sys.executable, str(REPO / "bench" / "preprocess.py"), "--records", "200", "--rounds", "1",
                    "--model", str(tiny_model), "--out", str(tmp_path)], check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "preprocess.json").read_text(encoding="utf-8"))
    results = record["results"]
    assert set(results) == {"plain", "plain-2proc", "portaft"}
    # portaft's rows hold exactly the tokens apply_chat_template gives, for every conversation
    assert results["portaft"]["tokens"] == results["plain"]["tokens"] > 200 * 100
    assert results["portaft"]["records"] == 200
    assert (tmp_path / "preprocess.md").read_text(encoding="utf-8").startswith("# Preprocessing 200 conversations")


def test_attention_benchmark_says_it_needs_a_gpu_instead_of_a_traceback():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "attention.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "no CUDA GPU is visible" in done.stderr and "Traceback" not in done.stderr
