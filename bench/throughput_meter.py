"""The throughput benchmark's step meter and its profiler report.

`make_meter`: the TrainerCallback that times optimizer steps after the warm-up (CUDA
or NPU events), counts every micro-batch's tokens, records full garbage collections and the
steps in which torch.compile compiled a graph (`compiled_graphs`), and with a profile
file runs two steps under torch.profiler. `measured_indices`: which steps of a run are
measured. The profile's text: `profile_report` (GPU busy, host waits, launches, then the
tables), `idle_gaps` (where the GPU ran dry and what the host did), `wait_sites` (the
code that made the host wait), over `merged` and `covered` intervals.
`matmul_parameters`: the N of MFU.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

from throughput_settings import FIRST_LOSSES  # bench/throughput_settings.py


def make_meter(warmup: int, device: str = "cpu", profile: str | None = None):
    """A TrainerCallback that times optimizer steps after `warmup` and counts the tokens of
    every micro-batch the model ran (a forward pre-hook), on the device: no extra syncs.
    A step in which torch.compile compiled a graph (the compiled layers meet a new kind of
    batch, e.g. the first 4k batch holding a shorter sample) is left out of the measurement
    and listed: a one-time cost of seconds that a run of 16 steps would otherwise spread
    over every step.
    With `profile` (a file), the two steps after the warm-up run under torch.profiler and
    its table of kernels by device time goes to that file; the two after those run under it
    again on a GPU, with Python stacks (which cost the host too much time to show its gaps),
    to say where the host waited (those steps' timings suffer)."""
    import torch
    from transformers import TrainerCallback

    # device: "cuda", "npu" (torch_npu gives torch.npu the same Event, synchronize and memory
    # calls) or "cpu" (host clock, no memory figure); the profile's device kernels: CUDA only
    cuda, timed = device == "cuda", device != "cpu"
    accelerator = getattr(torch, device) if timed else None

    class Meter(TrainerCallback):
        def __init__(self):
            self.steps: list[list[tuple]] = []  # per optimizer step, per micro-batch: (useful, trained, samples)
            self.current: list[tuple] | None = None  # None outside a step: generation etc. is not counted
            self.begins: list = []
            self.ends: list = []
            # profiled pairs of steps, by the count of steps before them: the kernels, then on a
            # GPU where the host waited (with Python stacks)
            self.profile_after = (warmup, warmup + 2) if cuda else (warmup,)
            self.profiling = False
            # Python's full garbage collections while training: (step, host ms); each walks every
            # object the process holds, and a step where one falls waits for it
            self.full_collections: list[tuple[int, float]] = []
            self.collection_started = 0.0
            self.compiled_steps: list[int] = []  # 1-based numbers of the steps that compiled a graph
            self.graphs_before = 0
            gc.callbacks.append(self.on_collection)

        def on_collection(self, phase, info):
            if info["generation"] != 2 or not self.begins:
                return
            if phase == "start":
                self.collection_started = time.perf_counter()
            else:
                self.full_collections.append(
                    (len(self.begins), round((time.perf_counter() - self.collection_started) * 1e3, 1)))

        def mark(self):
            if not timed:
                return time.perf_counter()
            event = accelerator.Event(enable_timing=True)
            event.record()
            return event

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(self.count, with_kwargs=True)
            self.parameters = matmul_parameters(model)
            self.attention = getattr(model.config, "_attn_implementation", None)
            if timed:
                accelerator.synchronize()
                accelerator.reset_peak_memory_stats()  # the loaded model counts, loading's temporaries do not

        def count(self, module, args, kwargs):
            if self.current is None:
                return
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
            if mask is not None and mask.dim() == 2:  # padded: the mask marks the real tokens
                useful, samples = mask.sum(), ids.shape[0]
            else:  # flattened: every token is real; position ids restart at 0 per sample
                useful, samples = ids.numel(), ids.shape[0] if positions is None else (positions == 0).sum()
            self.current.append((useful, (kwargs["labels"] != -100).sum(), samples))

        def on_step_begin(self, args, state, control, **kwargs):
            self.current = []
            if profile and len(self.begins) in self.profile_after:
                from torch._C._profiler import _ExperimentalConfig

                stacks = len(self.begins) > warmup  # verbose: without it torch records no op's stack
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                                       + ([torch.profiler.ProfilerActivity.CUDA] if cuda else []),
                                                       with_stack=stacks, experimental_config=_ExperimentalConfig(verbose=stacks))
                self.profiler.start()
                self.profiling = True
            self.graphs_before = compiled_graphs()
            self.begins.append(self.mark())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step <= FIRST_LOSSES:  # logged whatever the recipe's logging_steps: paths compared by them
                control.should_log = True
            self.ends.append(self.mark())
            self.steps.append(self.current)
            if compiled_graphs() > self.graphs_before:
                self.compiled_steps.append(len(self.ends))
            self.current = None
            if self.profiling and len(self.ends) - 2 in self.profile_after:
                self.profiler.stop()
                self.profiling = False
                if timed:
                    accelerator.synchronize()
                rank = int(os.environ.get("RANK", "0"))  # under torchrun: a file per process
                out = Path(profile if not rank else f"{profile[:-4]}-rank{rank}.txt")
                if len(self.ends) == warmup + 2:
                    out.write_text(profile_report(self.profiler, warmup, self.measured_ms(), cuda), encoding="utf-8")
                else:
                    with out.open("a", encoding="utf-8") as report:
                        report.write("\n" + "\n".join(wait_sites(self.profiler.events(), warmup + 2)) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            gc.callbacks.remove(self.on_collection)
            if self.profiling:  # the run ended inside a profiled pair: nothing to say
                self.profiler.stop()
            if timed:
                accelerator.synchronize()
                self.peak = accelerator.max_memory_allocated() / 2**30
            self.losses = [entry["loss"] for entry in state.log_history if "loss" in entry]

        def step_ms(self) -> list[float]:
            """Each step's time, from the previous step's end (the first: from its own begin), so
            the batch fetch between steps counts; a slow step (a recompile, a host stall) shows."""
            marks = [self.begins[0]] + self.ends
            return [round(a.elapsed_time(b) if timed else (b - a) * 1e3, 1) for a, b in zip(marks, marks[1:])]

        def measured_ms(self) -> float:
            """From the end of the warm-up to the latest step's end (CUDA events: call after a sync)."""
            start = self.ends[warmup - 1] if warmup else self.begins[0]
            return start.elapsed_time(self.ends[-1]) if timed else (self.ends[-1] - start) * 1e3

        def results(self) -> dict:
            if len(self.ends) <= warmup:
                raise RuntimeError(f"{len(self.ends)} steps ran, none after the {warmup} warm-up steps")
            per_step = [[sum(int(batch[i]) for batch in step) for i in range(3)] for step in self.steps]
            compiled = [number in self.compiled_steps for number in range(1, len(self.ends) + 1)]
            by_rank = {}
            if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process's tokens
                counts = torch.tensor(per_step, device=device)
                gathered = [torch.zeros_like(counts) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(gathered, counts)
                per_step = torch.stack(gathered).sum(0).tolist()
                # a step waits for its busiest process: how uneven the processes' shares were
                by_rank = {"rank_step_tokens": [[step[0] for step in rank.tolist()] for rank in gathered]}
                # a compile in one process holds up the other: every process leaves that step out
                flags = torch.tensor(compiled, dtype=torch.int32, device=counts.device)
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                compiled = [bool(flag) for flag in flags.tolist()]
            compiled_steps = [i + 1 for i, flag in enumerate(compiled) if flag]
            measured = measured_indices({"steps": len(self.ends), "warmup": warmup, "compiled_steps": compiled_steps})
            if not measured:
                raise RuntimeError(f"every step after the {warmup} warm-up steps compiled a graph: none to measure")
            step_ms = self.step_ms()
            seconds = sum(step_ms[i] for i in measured) / 1e3
            useful, trained = (sum(per_step[s][i] for s in measured) for i in range(2))
            return {"steps": len(self.ends), "warmup": warmup, "measured_steps": len(measured),
                    "compiled_steps": compiled_steps,
                    "seconds": round(seconds, 4),
                    "tokens": useful, "trained_tokens": trained, "tokens_per_second": round(useful / seconds, 1),
                    "trained_tokens_per_second": round(trained / seconds, 1),
                    "step_seconds": round(seconds / len(measured), 4),
                    "peak_memory_gib": round(self.peak, 2) if timed else None,
                    "step_tokens": [s[0] for s in per_step], "step_trained_tokens": [s[1] for s in per_step],
                    "step_samples": [s[2] for s in per_step], "micro_batches": [len(s) for s in self.steps],
                    "step_ms": step_ms, **by_rank,
                    "full_collections": [list(c) for c in self.full_collections],
                    "first_losses": self.losses[:FIRST_LOSSES], "losses": self.losses,
                    "matmul_parameters": self.parameters, "attention": self.attention}

    return Meter()


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def measured_indices(run: dict) -> list[int]:
    """0-based indices of a run's measured steps: after its warm-up, none that compiled."""
    # results written before compiles were left out have no warm-up of their own: all after it measured
    warmup = run["warmup"] if "warmup" in run else run["steps"] - run["measured_steps"]
    left_out = set(run.get("compiled_steps", ()))
    return [i for i in range(warmup, run["steps"]) if i + 1 not in left_out]


# host calls that wait for the device: where a step cannot run ahead of the GPU
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync")


def profile_report(profiler, warmup: int, wall_ms: float, cuda: bool) -> str:
    """The profiled steps in numbers first (is the GPU busy? how often does the host wait
    for it?), then the kernels by device time and the host's work by CPU time."""
    from torch.autograd import DeviceType

    events = profiler.events()
    lines = [f"two optimizer steps after {warmup} warm-up steps: {wall_ms:.1f} ms"]
    if cuda:
        # the GPU's own work: not the ranges code marks on its timeline (DDP's forward...)
        kernels = [(e.time_range.start, e.time_range.end, e.name) for e in events
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
        busy = covered([(start, end) for start, end, _ in kernels]) / 1e3
        talk = covered([(start, end) for start, end, name in kernels if "nccl" in name.lower()]) / 1e3
        lines.append(f"GPU busy {busy:.1f} ms ({busy / wall_ms:.0%}), of which collectives {talk:.1f} ms")
        waits = {}
        for event in events:
            if event.device_type == DeviceType.CPU and event.name in WAITS:
                count, total = waits.get(event.name, (0, 0.0))
                waits[event.name] = (count + 1, total + (event.time_range.end - event.time_range.start) / 1e3)
        launches = sum(1 for e in events if e.device_type == DeviceType.CPU and "LaunchKernel" in e.name)
        lines.append("host waiting for the GPU: " + (", ".join(
            f"{name} {count}x {total:.1f} ms" for name, (count, total) in sorted(waits.items())) or "never")
            + f"; kernel launches: {launches:,}")
        lines += idle_gaps(kernels, [e for e in events if e.device_type == DeviceType.CPU])
    averages = profiler.key_averages()
    if cuda:
        lines += ["", "by device time:", averages.table(sort_by="self_device_time_total", row_limit=45,
                                                         max_name_column_width=70)]
    lines += ["", "by CPU time (the host's own work):", averages.table(sort_by="self_cpu_time_total", row_limit=30,
                                                                         max_name_column_width=70)]
    return "\n".join(lines) + "\n"


def wait_sites(events, after: int, shown: int = 12) -> list[str]:
    """Where the host waited for the GPU, by the Python code that asked (a profile recorded
    with stacks): each sync, and each copy of 0.1 ms or more, under the innermost frame and
    the nearest three outside torch's own files. After a sync the GPU runs dry until the
    host launches again, so each site costs at least that launch latency a step."""
    from torch.autograd import DeviceType

    # On a GPU the runtime calls come with the driver's thread id, so torch gives them no
    # parent op: the op that asked is then the innermost one with a stack around the call.
    ops = [e for e in events if e.device_type == DeviceType.CPU and not e.name.startswith("cuda")]
    sites: dict[str, list] = {}
    for event in events:
        if event.device_type != DeviceType.CPU or event.name not in WAITS:
            continue
        took = (event.time_range.end - event.time_range.start) / 1e3
        if "Synchronize" not in event.name and took < 0.1:  # copies that did not wait
            continue
        asker, stack = event, []
        while asker is not None and not stack:  # a runtime call's stack is its aten op's
            stack, asker = list(getattr(asker, "stack", None) or []), getattr(asker, "cpu_parent", None)
        around = sorted((e for e in ops if e.time_range.start <= event.time_range.start
                         and event.time_range.end <= e.time_range.end),
                        key=lambda e: e.time_range.end - e.time_range.start)
        if not stack:
            stack = next((list(e.stack) for e in around if getattr(e, "stack", None)), [])
        outside = [frame for frame in stack[1:] if "/torch/" not in frame and not frame.startswith("<built-in")]
        frames = [_short_frame(frame) for frame in stack[:1] + outside[:3]] or [
            "no Python stack recorded" + (f" (inside {', '.join(e.name for e in around[:3])})" if around else "")]
        site = sites.setdefault(f"{event.name}: " + " < ".join(frames), [0, 0.0])
        site[0] += 1
        site[1] += took
    lines = [f"where the host waited for the GPU (steps {after + 1}-{after + 2}, profiled again with Python "
             f"stacks; innermost frame first): " + ("" if sites else "nowhere")]
    for site, (count, took) in sorted(sites.items(), key=lambda item: -item[1][0])[:shown]:
        lines.append(f"  {count}x, {took:.1f} ms: {site}")
    return lines


def _short_frame(frame: str) -> str:
    """'/x/site-packages/transformers/masking_utils.py(755): f' -> 'transformers/masking_utils.py(755): f'."""
    path, _, rest = frame.partition("(")
    if "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    else:
        path = "/".join(path.split("/")[-2:])
    return f"{path}({rest}" if rest else path


def idle_gaps(kernels: list[tuple[float, float, str]], host: list, shown: int = 8) -> list[str]:
    """Where the GPU had nothing to run: the gaps between its kernels, the largest ones with
    the kernels around them and the host's outermost ops during them (what kept the queue
    empty: a sync, the optimizer's launches, the next batch...). Microseconds in, ms out."""
    segments = merged(kernels)
    gaps = [(after[0] - before[1], before, after) for before, after in zip(segments, segments[1:])]
    if not gaps:
        return []
    origin = segments[0][0]
    outermost = [e for e in host if getattr(e, "cpu_parent", None) is None]
    lines = [f"GPU idle between its kernels: {sum(g[0] for g in gaps) / 1e3:.1f} ms in {len(gaps):,} gaps, "
             f"{sum(g[0] for g in gaps if g[0] >= 1000) / 1e3:.1f} ms of it in gaps of 1 ms or more; the largest:"]
    for length, before, after in sorted(gaps, key=lambda g: -g[0])[:shown]:
        start, end = before[1], after[0]
        during: dict[str, float] = {}
        for event in outermost:
            overlap = min(end, event.time_range.end) - max(start, event.time_range.start)
            if overlap > 0:
                during[event.name] = during.get(event.name, 0.0) + overlap
        ops = ", ".join(f"{name} {time / 1e3:.1f} ms" for name, time in sorted(during.items(), key=lambda i: -i[1])[:4])
        lines.append(f"  {length / 1e3:.1f} ms at {(start - origin) / 1e3:.1f} ms: after {before[2][:60]}, "
                     f"before {after[3][:60]}; host: {ops or 'no op recorded (Python)'}")
    return lines


def merged(intervals: list[tuple[float, float, str]]) -> list[list]:
    """The union of named [start, end) intervals, in order: [start, end, the name of the
    interval that ends it, the name of the one that starts it] per stretch without a gap."""
    segments: list[list] = []
    for start, end, name in sorted(intervals):
        if segments and start <= segments[-1][1]:
            if end > segments[-1][1]:
                segments[-1][1:3] = [end, name]
        else:
            segments.append([start, end, name, name])
    return segments


def covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: time some kernel ran, overlaps once."""
    return sum(end - start for start, end, *_ in merged([(start, end, "") for start, end in intervals]))


def matmul_parameters(model) -> int:
    """Base-model parameters in matmuls: all but LoRA's and the input embedding (a tied
    embedding counts once, as the LM head)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    total = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    return total - (0 if tied else embedding.numel())
