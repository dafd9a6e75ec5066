"""The settings Ascend users learn the hard way, set before torch_npu initialises.

torch_npu reads TASK_QUEUE_ENABLE, CPU_AFFINITY_CONF and PYTORCH_NPU_ALLOC_CONF when it
starts its runtime, HCCL reads HCCL_CONNECT_TIMEOUT when the process group connects, and
the compile mode must be chosen before the first operator runs. So `import_torch_npu()`
(the one place portaft imports torch_npu) sets each variable the environment leaves
unset, imports torch_npu, then turns jit_compile off; `notes()` says what it did, one
note each, for the run's effective recipe. A value already in the environment is the
user's and is kept (the note says so): that is how each one is overridden.

Where the values come from: Ascend's performance tuning guide for torch_npu (TASK_QUEUE_ENABLE=2,
CPU_AFFINITY_CONF=1, expandable segments), LLaMA-Factory (jit_compile off, its
NPU_JIT_COMPILE variable to turn it back on) and ms-swift/MindSpeed launch scripts
(HCCL_CONNECT_TIMEOUT=1200). None of this module has run on Ascend hardware.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# (variable, value, why): set where unset, before torch_npu is imported
ENVIRONMENT = (
    ("TASK_QUEUE_ENABLE", "2", "level-2 task queue: operators are dispatched from a second thread, so the host "
                               "queues ahead instead of launching each one itself"),
    ("CPU_AFFINITY_CONF", "1", "each process's threads pinned to cores near its NPU, so the host side is not "
                               "scheduled across the whole machine"),
    ("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True", "the caching allocator grows segments instead of "
                                                           "fragmenting memory into blocks no batch fits"),
)
SEVERAL_PROCESSES = (
    ("HCCL_CONNECT_TIMEOUT", "1200", "HCCL's default 120 s is shorter than rank 0 encoding the data while the "
                                     "others wait to connect"),
)
JIT_COMPILE = "NPU_JIT_COMPILE"  # LLaMA-Factory's name: 1/true turns jit_compile back on

_applied: list[str] = []  # the notes of what import_torch_npu() did, in order


def processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def set_environment(environ: Any = None) -> list[str]:
    """Set the platform's variables `environ` leaves unset; one note each, set or kept."""
    environ = os.environ if environ is None else environ
    wanted = ENVIRONMENT + (SEVERAL_PROCESSES if processes() > 1 else ())
    notes = []
    for name, value, why in wanted:
        if name in environ:
            notes.append(f"env {name}: {environ[name]} (yours, kept; portaft's default is {value}: {why})")
        else:
            environ[name] = value
            notes.append(f"env {name}: unset -> {value} ({why})")
    return notes


def jit_compile_wanted(environ: Any = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(JIT_COMPILE, "0").strip().lower() in ("1", "true", "yes")


def import_torch_npu() -> Any:
    """Import torch_npu with the platform's settings in place first; return the module.

    Raises whatever the import raises. Idempotent: the settings are applied once."""
    if "torch_npu" in sys.modules and sys.modules["torch_npu"] is not None:
        if not _applied:
            _applied.append("env: torch_npu was imported before portaft could set TASK_QUEUE_ENABLE, "
                            "CPU_AFFINITY_CONF and PYTORCH_NPU_ALLOC_CONF; export them before starting Python")
        return sys.modules["torch_npu"]
    notes = set_environment()
    import torch
    import torch_npu

    jit = jit_compile_wanted()
    set_mode = getattr(getattr(torch, "npu", None), "set_compile_mode", None)
    if callable(set_mode):
        set_mode(jit_compile=jit)
        notes.append(f"torch.npu.set_compile_mode(jit_compile={jit}) "
                     + ("(yours: NPU_JIT_COMPILE is set)" if jit else
                        "(operators run from Ascend's prebuilt binaries instead of being compiled for each new "
                        "shape, which stalls steps whose batch shapes change; NPU_JIT_COMPILE=1 turns it on)"))
    _applied[:] = notes
    return torch_npu


def notes() -> list[str]:
    """What import_torch_npu() set, for the run's notes (empty before it ran)."""
    return list(_applied)


def reset() -> None:
    """Forget what was applied (tests)."""
    _applied.clear()
