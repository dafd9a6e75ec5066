"""Every snippet runs: each `bash` and `python` block of README.md and docs/*.md, as written,
in order, in a fresh copy of the repository (what `git ls-files` lists, as a clone has),
beginning with the README's command 1. Which blocks run, and the marker that leaves one
out, are in tests/snippets.py."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snippets import REPO, to_run


def fresh_copy(into: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.mark.skipif(importlib.util.find_spec("openmind") is not None,
                    reason="the pages' commands are for the main install; CI's openMind environment tests the npu "
                           "backend's openMind path, and running them twice would cost CI ~15 minutes")
def test_every_snippet_runs_as_written_in_a_fresh_copy(tmp_path):
    clone = fresh_copy(tmp_path / "portaft")
    assert not (clone / "examples" / "models").exists() and not (clone / "output").exists()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    blocks = to_run()
    assert blocks[0].where.startswith("README.md") and "portaft run examples/self_identity.yaml" in blocks[0].code
    for block in blocks:
        command = ["bash", "-euo", "pipefail", "-c", block.as_run()] if block.language == "bash" \
            else [sys.executable, "-c", block.code]
        done = subprocess.run(command, cwd=clone, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=1800)  # a busy 2-core machine ran a 20-step block past 15 min
        assert done.returncode == 0, f"{block.where} failed ({done.returncode}):\n{block.code}\n" \
                                     f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{block.where}:\n{done.stderr[-3000:]}"
    assert (clone / "output" / "snippet" / "portaft_run.json").is_file()  # the README's Python snippet trained
