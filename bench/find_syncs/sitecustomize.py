"""Which operations wait for the GPU inside training steps (a benchmark helper, CUDA only).

    FIND_SYNCS=OUT PYTHONPATH=bench/find_syncs python bench/throughput.py ...

Python imports this file at start-up in every process the benchmark starts. With FIND_SYNCS
set, torch warns at every operation that synchronizes with the GPU
(torch.cuda.set_sync_debug_mode); the stacks of those inside the Trainer's training loop are
counted, and each process writes them, most frequent first, to OUT/syncs-PID.txt at exit.
Step 12 (bench/results/steps/12-...) found one sync of a non-logging step with it; until
2026-12-04 it kept only the stacks whose last 2,500 characters showed the training loop and
none from the backward's thread: why it missed Liger's three, which a profile with
stacks found (bench/results/h200-2026-12-04-waits/). This version finds all four on an
H200 (bench/results/h200-2026-12-04-compile-steps/).
"""

import os

if os.environ.get("FIND_SYNCS"):
    import atexit
    import collections
    import threading
    import traceback
    import warnings

    import torch

    _stacks: collections.Counter = collections.Counter()

    def _count(message, category, filename, lineno, file=None, line=None):
        stack = "".join(traceback.format_stack()[:-2])
        # inside the training loop (not loading or saving), looked for in the whole stack: a
        # fused loss's is deep enough to push the loop out of the end that is kept; or on
        # another thread, where autograd runs the backward (its stack starts at the op)
        backward = threading.current_thread() is not threading.main_thread()
        if backward or "training_step" in stack or "_inner_training_loop" in stack:
            where = f"[thread {threading.current_thread().name}]\n" if backward else ""
            _stacks[where + stack[-2500:]] += 1  # the end of the stack: who asked

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
