"""The throughput benchmark's results: from the runs to the JSON files and the tables.

`summarise_runs`: per path over its rounds, the median tokens/s, step time, peak memory,
MFU and `busiest_process_excess`; `markdown` (with `scaling`, several processes against
one): the table of records; `merge`: one record from rounds run apart; `result_name`,
`write_record` (OUT/throughput-NAME.json and .md) and `write_summary` (OUT/throughput.md
from every JSON in OUT).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from throughput_meter import measured_indices  # bench/throughput_meter.py
from throughput_settings import FIRST_LOSSES, LORA, PATHS, SEED_ACCUMULATION, SPEC_PEAK  # bench/throughput_settings.py


def summarise_runs(record: dict) -> dict:
    """Per path over its rounds: median useful tokens/s (min, max), step time, peak memory, MFU."""
    spec = spec_peak(record.get("gpu")) if record["device"] == "cuda" else None
    measured_peak = record.get("matmul_peak_tflops")
    summary = {}
    for path in PATHS:
        runs = [r for r in record["runs"] if r["path"] == path]
        good = [r for r in runs if "tokens_per_second" in r]
        if not runs:
            continue
        entry: dict = {"rounds": len(runs), "failed": len(runs) - len(good), "batch": (good or runs)[-1]["batch"],
                       "out_of_memory_at": sorted({r["batch"] for r in record.get("out_of_memory", [])
                                                   if r["path"] == path}, reverse=True)}
        problems = [r.get("skipped") or r.get("error") for r in runs if r not in good]
        if problems:
            entry["problem"] = problems[0]
        if good:
            speeds = [r["tokens_per_second"] for r in good]
            median = statistics.median(speeds)
            # model FLOP/s per GPU: forward 2N + backward 2N per token
            flops = median * 4 * good[0]["matmul_parameters"] / record.get("nproc", 1)
            entry.update(tokens_per_second=round(median), min=round(min(speeds)), max=round(max(speeds)),
                         step_seconds=round(statistics.median(r["step_seconds"] for r in good), 3),
                         peak_memory_gib=max((r["peak_memory_gib"] or 0) for r in good) or None,
                         first_losses=good[0]["first_losses"], settings=good[0]["settings"],
                         matmul_parameters=good[0]["matmul_parameters"],
                         mfu_spec=round(flops / spec, 4) if spec else None,
                         mfu_measured=round(flops / (measured_peak * 1e12), 4) if measured_peak else None)
            excess = [e for e in map(busiest_process_excess, good) if e is not None]
            if excess:
                entry["busiest_process_excess"] = round(statistics.median(excess), 4)
        summary[path] = entry
    speed = {p: s.get("tokens_per_second") for p, s in summary.items()}
    for other in ("tuned", "seed"):
        if speed.get("portaft") and speed.get(other):
            summary[f"portaft_over_{other}"] = round(speed["portaft"] / speed[other], 3)
    return summary


def busiest_process_excess(run: dict) -> float | None:
    """Over the measured steps of a run with several processes, how many more tokens the
    busiest process had than the processes' mean, on average (0.05: 5% more). A step waits
    for its busiest process, so this is about what evenly shared steps could gain."""
    ranks = run.get("rank_step_tokens")
    if not ranks:
        return None
    by_step = list(zip(*ranks))
    return statistics.mean(max(by_step[i]) / statistics.mean(by_step[i]) for i in measured_indices(run)) - 1


def spec_peak(gpu: str | None) -> float | None:
    for name, peak in SPEC_PEAK.items():  # "H100 PCIe" before "H100"
        if gpu and name in gpu:
            return peak
    return None


def markdown(records: list[dict]) -> str:
    """One table over every (shape, lengths) record."""
    lines = ["# Training throughput: seed settings, tuned plain HF, portaft", "",
             "Useful (non-pad) tokens per second, median of the rounds (min-max), counted from the batches that "
             "ran, after the warm-up steps and leaving out steps that compiled a graph (listed below each "
             "run); LoRA r=64 on all linear layers; same data and initial weights for "
             "every path, so the losses of step 1 must agree (the seed path's first step holds the first 16 "
             "samples of the others' first batch). MFU = tokens/s x 4 x N / peak (N: parameters in matmuls; "
             "attention left out). Written by `python bench/throughput.py` (see its docstring).", "",
             "| shape | data | path | batch | useful tokens/s | step (s) | peak GiB | MFU (spec) | MFU (matmul) "
             "| loss, steps 1-3 | x seed | x tuned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for record in records:
        summary = record["summary"]
        data = next((r["data"] for r in record["runs"] if "data" in r), None)
        for path in PATHS:
            s = summary.get(path)
            if s is None:
                continue
            cells = [record["shape"], record["lengths"], path, _batch(path, s, record)]
            if "tokens_per_second" not in s:
                problem = s["problem"].splitlines()[0]
                cells += [f"not run: {problem[:150]}{'...' if len(problem) > 150 else ''}"] + [""] * 7
            else:
                cells += [f"{s['tokens_per_second']:,} ({s['min']:,}-{s['max']:,})"
                          + (f", {s['failed']} of {s['rounds']} rounds failed" if s["failed"] else ""),
                          f"{s['step_seconds']:.3f}", _number(s["peak_memory_gib"]), _percent(s["mfu_spec"]),
                          _percent(s["mfu_measured"]), ", ".join(f"{x:.3f}" for x in s["first_losses"]),
                          _ratio(s, summary.get("seed")), _ratio(s, summary.get("tuned"))]
            lines.append("| " + " | ".join(cells) + " |")
        peak = spec_peak(record.get("gpu"))
        notes.append(f"- {record['shape']}, {record['lengths']}: {record.get('gpu') or 'CPU (smoke run)'}, "
                     f"{record['date']}, {record['settings']['rounds']} rounds of {record['settings']['steps']} steps "
                     f"(seed {record['settings']['seed_steps']}), {record['settings']['warmup']} warm-up; "
                     + (f"data {data['samples']} samples, mean {data['mean_tokens']} tokens, "
                        f"{data['truncated']} cut at {record['settings']['max_length']}; " if data else "")
                     + (f"LoRA dropout {lora['dropout']}; " if (lora := record["settings"].get("lora", LORA))
                        ["dropout"] != LORA["dropout"] else "")
                     + (f"a log every {every} steps after the first {FIRST_LOSSES}; " if (
                        every := record["settings"].get("logging_steps", 1)) > 1 else "")
                     + (f"MFU (spec) against {peak / 1e12:.0f} TFLOP/s dense bf16, " if peak else "")
                     + (f"MFU (matmul) against the {record['matmul_peak_tflops']} TFLOP/s a bf16 matmul reached "
                        "on this GPU" + (" (the median of the merged files')" if record.get("merged_from") else "")
                        + "; " if record.get("matmul_peak_tflops") else "")
                     + (f"rounds merged from {len(merged)} runs of the benchmark ("
                        + ", ".join(f"{m['rounds']} on {m['date']}" for m in merged) + "); "
                        if (merged := record.get("merged_from")) else "")
                     + _left_out(record)
                     + "versions: " + ", ".join(f"{k} {v}" for k, v in _versions(record).items()))
    return "\n".join(lines + scaling(records) + ["", "Runs:", ""] + notes) + "\n"


def _left_out(record: dict) -> str:
    """The measured steps left out because they compiled a graph, by path and round."""
    parts = []
    for run in record["runs"]:
        left_out = [n for n in run.get("compiled_steps", ()) if n > run["warmup"]]  # written with the warm-up
        if left_out:
            ms = ", ".join(f"{run['step_ms'][n - 1] / 1e3:.1f} s" for n in left_out)
            parts.append(f"{run['path']} round {run.get('round', 1)} step{'s' * (len(left_out) > 1)} "
                         f"{', '.join(map(str, left_out))} ({ms})")
    return f"left out for compiling: {'; '.join(parts)}; " if parts else ""


def scaling(records: list[dict]) -> list[str]:
    """portaft's tokens/s with N processes over one process's, for the shapes OUT holds both of."""
    def speed(record: dict) -> float | None:
        return record["summary"].get("portaft", {}).get("tokens_per_second")

    lines = []
    for several in (r for r in records if r.get("nproc", 1) > 1 and speed(r)):
        one = next((r for r in records if r.get("nproc", 1) == 1 and speed(r) and r["shape"] == several["shape"]
                    and r["lengths"] == several["lengths"]), None)
        if one is not None:
            lines.append(f"- {several['shape']}, {several['lengths']}: {several['nproc']} processes make "
                         f"{speed(several):,} useful tokens/s, {speed(several) / speed(one):.2f}x one process's "
                         f"{speed(one):,} (ideal {several['nproc']}x)"
                         + (f"; a step's busiest process had {excess:.1%} more tokens than their mean" if (
                             excess := several["summary"]["portaft"].get("busiest_process_excess")) is not None
                            else ""))
    return ["", "Several GPUs (portaft path, `--nproc`):", ""] + lines if lines else []


def _batch(path: str, s: dict, record: dict) -> str:
    if path == "seed":
        return f"{s['batch']} x GA {SEED_ACCUMULATION}, checkpointing"
    gpus = f" x {record['nproc']} processes" if record.get("nproc", 1) > 1 else ""
    settings = s.get("settings", {}) if path == "portaft" else {}
    without, adding = settings.get("without"), settings.get("with")
    text = f"{s['batch']}, padding-free" + (", Liger" if record["device"] == "cuda" else "") if path == "tuned" \
        else str(s["batch"]) + (f", without {' and '.join(without)}" if without else "") \
        + (f", with {' and '.join(adding)}" if adding else "")
    return text + gpus + "".join(f" ({b}: out of memory)" for b in s["out_of_memory_at"])


def _versions(record: dict) -> dict:
    return next((r["versions"] for r in record["runs"] if "versions" in r), {})


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ratio(s: dict, other: dict | None) -> str:
    if not other or "tokens_per_second" not in other or other is s:
        return ""
    return f"{s['tokens_per_second'] / other['tokens_per_second']:.2f}"


# what must agree for rounds of two records to be one table's rounds
SAME_BENCHMARK = ("benchmark", "shape", "lengths", "device", "gpu", "nproc")
SAME_SETTINGS = ("max_length", "steps", "seed_steps", "warmup", "logging_steps", "lora")


def merge(files: list[Path], out: Path) -> Path:
    """One record from rounds of one benchmark run apart (two GPUs of a machine at once, or a
    later call when one would not fit a time limit): the runs of every file in the given order,
    rounds renumbered, the summary computed again. The measured matmul peak is the median of
    the files' (each process measured its own); every file's date and peak are kept."""
    records = []
    for file in files:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(record.get("runs"), list) or "rounds" not in record.get("settings", {}):
                raise KeyError("runs, settings.rounds")  # what a result file of this script holds
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--merge: {file} is not a result file of bench/throughput.py "
                             f"({type(exc).__name__}: {exc}); give its throughput-SHAPE-LENGTHS.json files") from None
        records.append(record)
    first = records[0]
    for file, record in zip(files[1:], records[1:]):
        differs = [k for k in SAME_BENCHMARK if record.get(k) != first.get(k)] + [
            f"settings.{k}" for k in SAME_SETTINGS if record["settings"].get(k) != first["settings"].get(k)]
        if differs:
            raise SystemExit(f"--merge: {file} is not the same benchmark as {files[0]}: "
                             f"{', '.join(differs)} differ; merge only rounds of one benchmark")
    runs, rounds = [], 0
    for record in records:
        runs += [run | {"round": run["round"] + rounds} for run in record["runs"]]
        rounds = max([rounds] + [run["round"] for run in runs])
    peaks = [r["matmul_peak_tflops"] for r in records if r.get("matmul_peak_tflops")]
    merged = first | {"date": max(r["date"] for r in records),
                      "matmul_peak_tflops": statistics.median(peaks) if peaks else None,
                      "settings": first["settings"] | {"rounds": rounds}, "runs": runs,
                      "out_of_memory": [oom for r in records for oom in r.get("out_of_memory", [])],
                      "merged_from": [{"file": f.name, "date": r["date"], "rounds": r["settings"]["rounds"],
                                       "matmul_peak_tflops": r.get("matmul_peak_tflops")}
                                      for f, r in zip(files, records)]}
    merged["summary"] = summarise_runs(merged)
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, result_name(first["shape"], first["lengths"], first["nproc"]), merged)
    return write_summary(out)


def result_name(shape: str, lengths: str, nproc: int) -> str:
    """SHAPE-LENGTHS of the result files; several processes get files of their own."""
    return f"{shape}-{lengths}" + (f"-{nproc}gpus" if nproc > 1 else "")


def write_record(out: Path, name: str, record: dict) -> None:
    """OUT/throughput-NAME.json and its table, .md."""
    (out / f"throughput-{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / f"throughput-{name}.md").write_text(markdown([record]), encoding="utf-8")


def write_summary(out: Path) -> Path:
    """OUT/throughput.md from every OUT/throughput-*.json."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("throughput-*.json"))]
    path = out / "throughput.md"
    path.write_text(markdown(records), encoding="utf-8")
    return path
