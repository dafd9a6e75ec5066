"""The golden of a behaviour-preserving change: per-step losses and adapter hashes on the CPU.

    python scripts/golden.py record OUT.json       # before the change
    python scripts/golden.py check OUT.json        # after it: exit 0 when equal bit for bit

Three runs of examples/self_identity.yaml on the cpu backend, each logging every step:
as written, packed, and killed with SIGKILL while writing a checkpoint and then resumed
(LoRA dropout on, so the RNG must be restored too). Only portaft's public API is used, so
the same script measures the code before and after a redesign. Needs the example model
(python -m portaft.testing examples/models/tiny-deepseek); about 5 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import yaml

RECIPE = Path("examples/self_identity.yaml")

# kill -9 half-way through writing checkpoint-8 (weights on disk, RNG state not), as tests/runs/test_resume.py
KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def killed_while_saving(self, output_dir):
        if self.state.global_step == 8:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = killed_while_saving
    import portaft
    portaft.run(sys.argv[1], backend="cpu", echo=lambda _: None)
""")


def _recipe(work: Path, name: str, **changes) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["train"].update(output_dir=str(work / name), logging_steps=1)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            recipe[section][field] = value
        else:
            recipe[section] = value
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def _summary(output_dir: Path) -> dict:
    record = json.loads((output_dir / "portaft_run.json").read_text())
    adapter = output_dir / "adapter_model.safetensors"
    return {
        "losses": [entry["loss"] for entry in record["log_history"] if "loss" in entry],
        "steps": record["log_history"][-1].get("step"),
        "adapter_sha256": hashlib.sha256(adapter.read_bytes()).hexdigest(),
    }


def measure() -> dict:
    import portaft

    work = Path(tempfile.mkdtemp(prefix="portaft-golden-"))
    try:
        runs = {}
        for name, changes in (("as_written", {}), ("packed", {"packing": True})):
            result = portaft.run(_recipe(work, name, **changes), backend="cpu", echo=lambda _: None)
            runs[name] = _summary(result.output_dir)
        resumed = _recipe(work, "resumed", lora__dropout=0.1, train__max_steps=12, train__save_strategy="steps",
                          train__save_steps=4)
        (work / "killer.py").write_text(KILLER)
        killed = subprocess.run([sys.executable, str(work / "killer.py"), str(resumed)], capture_output=True, text=True)
        if killed.returncode != -9:
            raise SystemExit(f"the killed run did not die by SIGKILL (exit {killed.returncode}):\n{killed.stderr}")
        result = portaft.run(resumed, backend="cpu", echo=lambda _: None)
        runs["killed_and_resumed"] = {**_summary(result.output_dir),
                                      "resumed_from": Path(json.loads((result.output_dir / "portaft_run.json")
                                                                      .read_text())["resumed_from"]).name}
        return runs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    command, path = argv[0], Path(argv[1])
    got = measure()
    if command == "record":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n")
        print(f"golden written to {path}")
        return 0
    expected = json.loads(path.read_text())
    differ = [name for name in expected if expected[name] != got.get(name)]
    for name in expected:
        print(f"{name}: {'equal' if name not in differ else 'DIFFERENT'} ({len(got[name]['losses'])} losses, "
              f"adapter {got[name]['adapter_sha256'][:16]}...)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
