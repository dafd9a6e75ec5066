"""Which operations wait for the GPU inside training steps (a benchmark helper, CUDA only).

    FIND_SYNCS=OUT PYTHONPATH=bench/find_syncs python bench/throughput.py ...

Python imports this file at start-up in every process the benchmark starts. With FIND_SYNCS
set, torch warns at every operation that synchronizes with the GPU
(torch.cuda.set_sync_debug_mode); the stacks of those inside the Trainer's training loop are
counted, and each process writes them, most frequent first, to OUT/syncs-PID.txt at exit.
How step 12 found the one sync of a non-logging step (bench/results/steps/12-...).
"""

import os

if os.environ.get("FIND_SYNCS"):
    import atexit
    import collections
    import traceback
    import warnings

    import torch

    _stacks: collections.Counter = collections.Counter()

    def _count(message, category, filename, lineno, file=None, line=None):
        stack = "".join(traceback.format_stack()[:-2])[-2500:]  # the end of the stack: who asked
        if "training_step" in stack or "_inner_training_loop" in stack:  # not loading or saving
            _stacks[stack] += 1

    def _write():
        if _stacks:
            out = os.path.join(os.environ["FIND_SYNCS"], f"syncs-{os.getpid()}.txt")
            with open(out, "w", encoding="utf-8") as handle:
                handle.writelines(f"===== {n}x\n{stack}\n" for stack, n in _stacks.most_common())

    if torch.cuda.is_available():  # a CPU process (the benchmark's driver) has nothing to wait for
        warnings.showwarning = _count  # every warning of the process: the helper is for measuring only
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        atexit.register(_write)
