"""The preprocessing benchmark runs (a smoke run: its timings mean nothing here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


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


def test_preprocess_benchmark_times_validate_against_another_checkout(tiny_model, tmp_path):
    """--paths validate --against DIR: the whole `portaft validate` command, with this checkout's
    portaft and DIR's (here the same code), each side's wall and CPU seconds and their ratio."""
    subprocess.run([sys.executable, str(REPO / "bench" / "preprocess.py"), "--records", "50", "--rounds", "1",
                    "--paths", "validate", "--against", str(REPO), "--name", "validate", "--model", str(tiny_model),
                    "--out", str(tmp_path)], check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "validate.json").read_text(encoding="utf-8"))
    [base] = [name for name in record["results"] if name.startswith("validate@")]
    assert set(record["results"]) == {"validate", base}
    for result in record["results"].values():
        assert result["records"] == 50 and result["median_seconds"] > 0 and result["median_cpu_seconds"] > 0
    assert set(record["time_over_" + base.split("@")[1]]["validate"]) == {"median_seconds", "median_cpu_seconds"}
    assert "--paths validate --against" in record["command"]


def test_attention_benchmark_says_it_needs_a_gpu_instead_of_a_traceback():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "attention.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "no CUDA GPU is visible" in done.stderr and "Traceback" not in done.stderr


def test_shares_benchmark_counts_each_step_of_the_sft_mix_before_and_after_sharing_by_tokens(tmp_path):
    """bench/shares.py (a smoke run): for 2, 4 and 8 processes, the busiest process's excess
    over the mean with accelerate's shares and with shares by tokens, never more after."""
    subprocess.run([sys.executable, str(REPO / "bench" / "shares.py"), "--samples", "256", "--trials", "2",
                    "--out", str(tmp_path)], check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "shares.json").read_text(encoding="utf-8"))
    assert record["samples"] == 256 and set(record["results"]) == {"2", "4", "8"}
    for processes, result in record["results"].items():
        assert result["steps"] == 2 * (256 // (32 * int(processes)))
        assert 0 <= result["by_tokens"] < result["accelerate"]
        assert result["step_time_if_it_follows_tokens"] == round((1 + result["by_tokens"]) / (1 + result["accelerate"]),
                                                                 4)
    assert "| 2 | 8 | +" in (tmp_path / "shares.md").read_text(encoding="utf-8")
