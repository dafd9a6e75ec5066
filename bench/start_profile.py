"""Where a `portaft` command's wall-clock time goes: a sampling profile (issue 28).

    python bench/start_profile.py --out samples.json -- run recipe.yaml [overrides]
    python bench/start_profile.py --show samples.json

The first form runs `portaft ARGS` in this process while a thread reads the main thread's
stack every --every seconds (a wall-clock profile: time blocked on the disk or the GPU counts,
unlike cProfile's, and the run is not slowed by tracing every call). At exit it writes the
seconds each function was on the stack (inclusive) and a timeline of which portaft function
was running, and torch.compile's own timings of each phase where it compiled. The second
form prints the timeline's stretches and those timings. Used for
bench/results/seed-recipe-2026-12-07-c/.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import runpy
import sys
import threading
import time


def profile(out: str, every: float, argv: list[str]) -> None:
    main, started = threading.main_thread().ident, time.time()
    inclusive: collections.Counter = collections.Counter()
    timeline: list = []
    stopped = threading.Event()

    def sample() -> None:
        last = time.time()
        while not stopped.wait(every):
            now = time.time()
            frame, names = sys._current_frames().get(main), []
            while frame is not None:
                names.append(f"{frame.f_code.co_filename.split('site-packages/')[-1]}:{frame.f_code.co_name}")
                frame = frame.f_back
            for name in set(names):
                inclusive[name] += now - last
            own = [name for name in names if "portaft/" in name]
            timeline.append((round(now - started, 2), names[0] if names else "", own[0] if own else ""))
            last = now

    def write() -> None:
        stopped.set()
        with open(out, "w") as file:
            json.dump({"total_s": time.time() - started, "every_s": every, "compile_times": compile_times(),
                       "inclusive": inclusive.most_common(400), "timeline": timeline}, file)

    threading.Thread(target=sample, daemon=True).start()
    atexit.register(write)
    sys.argv = ["portaft", *argv]
    runpy.run_module("portaft", run_name="__main__", alter_sys=True)


def compile_times() -> dict:
    """torch.compile's own timings (dynamo's `dynamo_timed` phases: tracing, AOTAutograd,
    Inductor), the seconds of each time a phase ran, where this process compiled anything."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return {}
    headers, values = utils.compile_times(repr="csv")  # each value: "s1, s2, ...", one per compile
    return {phase: [float(seconds) for seconds in value.split(",")] for phase, value in zip(headers, values)}


def show(path: str, shortest: float) -> None:
    """Stretches of the timeline where the same portaft function (or, outside portaft, the same
    innermost function) was running, at least `shortest` seconds long."""
    record = json.load(open(path))
    stretches: list[list] = []
    for at, innermost, own in record["timeline"]:
        key = own or innermost
        if stretches and stretches[-1][2] == key:
            stretches[-1][1] = at
        else:
            stretches.append([at, at, key])
    for start, end, key in stretches:
        if end - start >= shortest:
            print(f"{start:7.2f} - {end:7.2f} s  {end - start:5.2f} s  {key}")
    for phase, seconds in (record.get("compile_times") or {}).items():
        print(f"compile: {phase}: {sum(seconds):.2f} s ({', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"total {record['total_s']:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="samples.json")
    parser.add_argument("--every", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("--show", metavar="FILE", help="print the stretches of a profile written before")
    parser.add_argument("--shortest", type=float, default=0.3, help="--show: the shortest stretch printed, s")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the portaft command's arguments")
    args = parser.parse_args()
    if args.show:
        show(args.show, args.shortest)
    else:
        profile(args.out, args.every, args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
