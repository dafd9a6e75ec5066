"""A comparison path's worker process, timed from launch (bench/seed_llamafactory.py,
bench/seed_unsloth.py): its output merged, and when the Trainer logged step 1's loss."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

FIRST_LOSS = re.compile(r"['\"]loss['\"]\s*:")  # a Trainer log line holding a loss: logging_steps 1, step 1


@dataclass
class Finished:
    output: str
    returncode: int
    wall_s: float  # launch to exit
    first_step_s: float | None  # launch to step 1's loss line


def run_timed(command: list[str], env: dict, cwd: str | None = None) -> Finished:
    started = time.time()
    lines, first_step = [], None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=cwd) as child:
        for line in child.stdout:
            lines.append(line)
            if first_step is None and FIRST_LOSS.search(line):
                first_step = round(time.time() - started, 1)
    return Finished("".join(lines), child.returncode, time.time() - started, first_step)
