"""The throughput benchmark (bench/throughput.py) runs on the CPU and counts exactly (a smoke
run with the tiny model: its timings mean nothing here, its token counts do)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portaft.data.packing import packing_supported

REPO = Path(__file__).resolve().parents[2]
STEPS, SEED_STEPS, WARMUP, SAMPLES, LOGGING_STEPS = 4, 2, 1, 16, 10


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("work")
    subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--shape", "tiny", "--lengths", "sft",
                    "--paths", "seed,tuned,portaft", "--rounds", "1", "--steps", str(STEPS), "--seed-steps",
                    str(SEED_STEPS), "--warmup", str(WARMUP), "--samples", str(SAMPLES), "--logging-steps", str(LOGGING_STEPS),
                    "--out", str(out),
                    "--work", str(work)], check=True, capture_output=True, timeout=600)
    return out, json.loads((out / "throughput-tiny-sft.json").read_text(encoding="utf-8"))


def runs_by_path(record):
    return {run["path"]: run for run in record["runs"]}


def test_every_path_trains_and_is_measured_or_says_why_not(smoke_run):
    _, record = smoke_run
    runs = runs_by_path(record)
    assert set(runs) == {"seed", "tuned", "portaft"}
    for path, run in runs.items():
        if path == "tuned" and packing_supported() is not None:  # old transformers: flattened samples would mix
            assert "block-diagonal" in run["skipped"]
            continue
        assert "error" not in run and "skipped" not in run, run
        assert run["tokens"] > 0 and run["tokens_per_second"] > 0 and run["measured_steps"] == run["steps"] - WARMUP
        # the first 3 steps log whatever logging_steps says (their losses are compared), then every 10th
        assert len(run["first_losses"]) == min(3, run["steps"]), run["losses"]
        assert len(run["losses"]) <= min(3, run["steps"]) + 1, run["losses"]


def test_token_counts_are_exactly_the_tokens_of_the_samples_that_ran(smoke_run):
    _, record = smoke_run
    for path, run in runs_by_path(record).items():
        if "skipped" in run:
            continue
        data = run["data"]
        assert data["samples"] == SAMPLES and data["shortest"] < data["longest"]  # padded batches hold padding
        per_step = (2 * 8, SEED_STEPS) if path == "seed" else (run["batch"], STEPS)
        assert run["step_samples"] == [per_step[0]] * per_step[1]
        # every step's samples cover whole epochs, so the steps hold each sample exactly `epochs` times:
        # counting padding, or missing or double-counting a micro-batch, breaks these equalities
        epochs, rest = divmod(sum(run["step_samples"]), data["samples"])
        assert rest == 0 and epochs >= 1
        assert sum(run["step_tokens"]) == epochs * data["tokens"]
        assert sum(run["step_trained_tokens"]) == epochs * data["trained_tokens"]
        assert run["tokens"] == sum(run["step_tokens"][WARMUP:])  # warm-up steps are not measured
        # the file rounds tokens/s to 0.1: a slow CPU's few tokens/s are off by that much at most
        assert run["tokens_per_second"] == pytest.approx(run["tokens"] / run["seconds"], rel=1e-3, abs=0.05)


def test_plain_and_portaft_train_the_same_first_batch_to_the_same_loss(smoke_run):
    _, record = smoke_run
    runs = runs_by_path(record)
    if "skipped" in runs["tuned"]:
        pytest.skip(runs["tuned"]["skipped"])
    # same data, same sampler seed, same initial weights: padded and flattened batches agree
    assert runs["tuned"]["step_tokens"][0] == runs["portaft"]["step_tokens"][0]
    assert runs["tuned"]["first_losses"][0] == pytest.approx(runs["portaft"]["first_losses"][0], rel=1e-4)


def test_results_are_written_as_tables_and_the_recipe_is_a_plain_one(smoke_run):
    out, record = smoke_run
    table = (out / "throughput-tiny-sft.md").read_text(encoding="utf-8")
    for path in ("seed", "tuned", "portaft"):
        assert f"| tiny | sft | {path} |" in table
    assert (out / "throughput.md").read_text(encoding="utf-8") == table  # the summary of every JSON in OUT
    assert set(record["recipe"]["train"]) == {"output_dir", "per_device_train_batch_size", "learning_rate", "bf16",
                                              "max_steps", "logging_steps", "save_strategy", "report_to"}


def load_benchmark(name):
    """bench/NAME.py by its path (bench/ is no package): throughput_meter (the step meter, the
    profile's report), throughput_results (summaries, tables, --merge) or throughput (the
    driver). bench/ is on sys.path meanwhile, as for `python bench/throughput.py`: the
    modules import their siblings."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def test_a_path_out_of_memory_runs_again_at_half_the_batch_and_keeps_it():
    launched = []

    def launch(path, round_number, batch):  # as if 8 samples per batch were the most that fit
        launched.append((path, round_number, batch))
        if path != "seed" and batch > 8:
            return {"error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 18.55 GiB."}
        return {"tokens_per_second": 1.0}

    saved = []
    batches = {"seed": 2, "tuned": 8, "portaft": 32}
    load_benchmark("throughput").run_rounds(["seed", "tuned", "portaft"], range(1, 3), batches, launch,
                                            lambda runs, oom: saved.append((list(runs), list(oom))))
    runs, out_of_memory = saved[-1]
    assert [(r["path"], r["round"], r["batch"]) for r in runs] == [
        ("seed", 1, 2), ("tuned", 1, 8), ("portaft", 1, 8), ("tuned", 2, 8), ("portaft", 2, 8), ("seed", 2, 2)]
    assert [(r["path"], r["batch"]) for r in out_of_memory] == [("portaft", 32), ("portaft", 16)]
    assert ("portaft", 2, 32) not in launched  # the second round starts at the batch that fitted
    assert len(saved) == len(runs)  # results are written after every run


def test_the_seed_path_keeps_the_tutorial_batch_even_out_of_memory():
    saved = []
    load_benchmark("throughput").run_rounds(["seed"], range(1, 2), {"seed": 2},
                                            lambda *_: {"error": "CUDA out of memory"},
                                            lambda runs, oom: saved.append((list(runs), list(oom))))
    assert saved[-1] == ([{"path": "seed", "round": 1, "batch": 2, "error": "CUDA out of memory"}], [])


def test_a_profile_counts_time_two_kernels_overlap_once():
    covered = load_benchmark("throughput_meter").covered
    assert covered([]) == 0
    assert covered([(0, 10), (5, 15), (20, 25)]) == 20  # 0-15 and 20-25
    assert covered([(20, 25), (0, 10), (2, 4)]) == 15  # unsorted, one inside another


def test_a_gpu_profile_says_how_busy_the_gpu_was_and_how_long_the_host_waited_for_it():
    """What a profile of a CPU-bound step must show (the kernels of a GPU run, stood in for).
    The ranges that code marks on the GPU's timeline (DDP's forward, nccl:all_reduce) are
    not kernels: counted, they made a 2-process profile's GPU look busy while it was idle."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, device, start, end, annotation=False):  # microseconds, as torch.profiler's events
        return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end),
                               is_user_annotation=annotation)

    events = [event("DistributedDataParallel.forward", DeviceType.CUDA, 0, 9000, annotation=True),
              event("nccl:all_reduce", DeviceType.CUDA, 500, 9000, annotation=True),
              event("gemm", DeviceType.CUDA, 0, 1000), event("ncclDevKernel_AllReduce", DeviceType.CUDA, 500, 3000),
              event("cudaStreamSynchronize", DeviceType.CPU, 3000, 5000), event("cudaLaunchKernel", DeviceType.CPU, 0, 5),
              event("cudaLaunchKernel", DeviceType.CPU, 6, 9)]
    tables = SimpleNamespace(table=lambda sort_by, **_: f"[table by {sort_by}]")
    profiler = SimpleNamespace(events=lambda: events, key_averages=lambda: tables)
    report = load_benchmark("throughput_meter").profile_report(profiler, 5, 10.0, cuda=True).splitlines()
    assert report[:3] == ["two optimizer steps after 5 warm-up steps: 10.0 ms",
                          "GPU busy 3.0 ms (30%), of which collectives 2.5 ms",
                          "host waiting for the GPU: cudaStreamSynchronize 1x 2.0 ms; kernel launches: 2"]
    assert "[table by self_device_time_total]" in report and "[table by self_cpu_time_total]" in report



def test_a_gpu_profile_shows_where_the_gpu_ran_dry_and_what_the_host_did_meanwhile():
    """The gaps between kernels, largest first, with the kernels around each and the host's
    outermost ops during it: a sync after the backward pass, then the optimizer's launches."""
    from types import SimpleNamespace

    def op(name, start, end, parent=None):  # microseconds
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), cpu_parent=parent)

    kernels = [(0, 1000, "gemm"), (500, 4000, "backward"), (4000, 4100, "norm"),
               (9100, 9200, "adam"), (9500, 12000, "embedding")]
    item = op("aten::item", 3000, 4150)
    host = [item, op("cudaStreamSynchronize", 3010, 4140, parent=item), op("Optimizer.step#AdamW.step", 8000, 9150),
            op("aten::to", 9300, 9400)]
    lines = load_benchmark("throughput_meter").idle_gaps(kernels, host)
    assert lines == ["GPU idle between its kernels: 5.3 ms in 2 gaps, 5.0 ms of it in gaps of 1 ms or more; "
                     "the largest:",
                     "  5.0 ms at 4.1 ms: after norm, before adam; host: Optimizer.step#AdamW.step 1.1 ms, "
                     "aten::item 0.1 ms",
                     "  0.3 ms at 9.2 ms: after adam, before embedding; host: aten::to 0.1 ms"]
    assert load_benchmark("throughput_meter").idle_gaps([(0, 10, "gemm")], host) == []


def test_a_gpu_profile_names_the_code_that_made_the_host_wait():
    """A sync costs a step the launch latency after it, so each one is worth naming: by the
    stack of the aten op that made it (a runtime call has none of its own; on a GPU it has no
    parent either, so the innermost op around it), innermost frame first, then the nearest
    ones outside torch. Copies that did not wait are left out."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    site = "/venv/lib/python3.12/site-packages/"
    packed = [site + "transformers/masking_utils.py(755): find_packed_sequence_indices",
              site + "torch/nn/modules/module.py(1775): _call_impl",
              site + "transformers/models/llama/modeling_llama.py(391): forward",
              "/work/main/portaft/checkpoints.py(242): training_step",
              site + "transformers/trainer.py(2014): training_step"]
    loss = [site + "liger_kernel/ops/fused_linear_cross_entropy.py(132): fused_linear_cross_entropy_forward"]

    def event(name, start, end, parent=None, stack=()):  # microseconds
        return SimpleNamespace(name=name, device_type=DeviceType.CPU, time_range=SimpleNamespace(start=start, end=end),
                               cpu_parent=parent, stack=list(stack))

    item_1, item_2, item_3 = (event("aten::item", t, t + 900, stack=packed) for t in (0, 5000, 9000))
    liger = event("aten::item", 3000, 3500, stack=loss)
    events = [item_1, event("cudaStreamSynchronize", 10, 800, parent=item_1),
              item_2, event("cudaStreamSynchronize", 5010, 5700, parent=item_2),
              liger, event("cudaMemcpyAsync", 3010, 3020, parent=liger),  # a copy that did not wait
              event("cudaStreamSynchronize", 3020, 3400),  # no parent (a GPU's runtime calls): the op around it
              item_3, event("cudaMemcpyAsync", 9010, 9800, parent=item_3),  # a copy that waited
              event("cudaStreamSynchronize", 12000, 12100),  # no op around it
              event("aten::_local_scalar_dense", 13000, 13500),  # an op without a stack around it
              event("cudaStreamSynchronize", 13010, 13400)]
    assert load_benchmark("throughput_meter").wait_sites(events, 5) == [
        "where the host waited for the GPU (steps 6-7, profiled again with Python stacks; innermost frame first): ",
        "  2x, 1.5 ms: cudaStreamSynchronize: transformers/masking_utils.py(755): find_packed_sequence_indices < "
        "transformers/models/llama/modeling_llama.py(391): forward < portaft/checkpoints.py(242): training_step < "
        "transformers/trainer.py(2014): training_step",
        "  1x, 0.4 ms: cudaStreamSynchronize: liger_kernel/ops/fused_linear_cross_entropy.py(132): "
        "fused_linear_cross_entropy_forward",
        "  1x, 0.8 ms: cudaMemcpyAsync: transformers/masking_utils.py(755): find_packed_sequence_indices < "
        "transformers/models/llama/modeling_llama.py(391): forward < portaft/checkpoints.py(242): training_step < "
        "transformers/trainer.py(2014): training_step",
        "  1x, 0.1 ms: cudaStreamSynchronize: no Python stack recorded",
        "  1x, 0.4 ms: cudaStreamSynchronize: no Python stack recorded (inside aten::_local_scalar_dense)"]
    assert load_benchmark("throughput_meter").wait_sites([], 5)[0].endswith("nowhere")


def test_two_processes_count_the_tokens_of_both_and_the_table_gives_the_scaling(tmp_path):
    """--nproc 2: the portaft path under torchrun (gloo on the CPU); every step's count is
    both processes' batches, and the table names the processes. A one-process run into the
    same folder keeps its own file, and the table gives the ratio of the two. A profile
    writes one table per process (which one waits for the other is what it shows)."""
    out, work = tmp_path / "results", tmp_path / "work"
    for nproc in (2, 1):
        subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--shape", "tiny", "--lengths", "sft",
                        "--paths", "portaft", "--nproc", str(nproc), "--rounds", "1", "--steps", "3", "--warmup", "1",
                        "--samples", "48", "--out", str(out), "--work", str(work)] + ["--profile"] * (nproc == 2),
                       check=True, capture_output=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for profile in ("profile-tiny-sft-2gpus-portaft.txt", "profile-tiny-sft-2gpus-portaft-rank1.txt"):
        report = (out / profile).read_text(encoding="utf-8")
        assert report.startswith("two optimizer steps after 1 warm-up steps: ") and "by CPU time" in report
    record = json.loads((out / "throughput-tiny-sft-2gpus.json").read_text(encoding="utf-8"))
    (run,) = record["runs"]
    assert "error" not in run, run
    assert run["step_samples"] == [2 * run["batch"]] * 3  # 8 samples per process and step
    assert run["tokens"] == sum(run["step_tokens"][1:])
    # each process's share of every step, and each step's time
    assert [sum(step) for step in zip(*run["rank_step_tokens"])] == run["step_tokens"]
    assert len(run["step_ms"]) == 3 and all(ms > 0 for ms in run["step_ms"])
    excess = record["summary"]["portaft"]["busiest_process_excess"]
    assert excess == round(load_benchmark("throughput_results").busiest_process_excess(run), 4) and excess >= 0
    table = (out / "throughput.md").read_text()
    assert record["nproc"] == 2 and f"| {run['batch']} x 2 processes |" in table
    (one,) = json.loads((out / "throughput-tiny-sft.json").read_text(encoding="utf-8"))["runs"]
    assert one["step_samples"] == [one["batch"]] * 3
    two_speed, one_speed = record["summary"]["portaft"]["tokens_per_second"], one["tokens_per_second"]
    assert (f"- tiny, sft: 2 processes make {two_speed:,} useful tokens/s, {two_speed / round(one_speed):.2f}x "
            f"one process's {round(one_speed):,} (ideal 2x); a step's busiest process had {excess:.1%} more tokens "
            "than their mean") in table
    assert "rank_step_tokens" not in one and "busiest_process_excess" not in json.loads(
        (out / "throughput-tiny-sft.json").read_text(encoding="utf-8"))["summary"]["portaft"]


def test_the_busiest_process_is_measured_over_the_measured_steps_only():
    """A step waits for its busiest process: over the steps after the warm-up, how many more
    tokens it had than the processes' mean (here 30 against 20, then an even step: 25%)."""
    run = {"steps": 3, "measured_steps": 2, "rank_step_tokens": [[900, 10, 30], [100, 30, 30]]}
    assert load_benchmark("throughput_results").busiest_process_excess(run) == pytest.approx(0.25)
    assert load_benchmark("throughput_results").busiest_process_excess({"steps": 3, "measured_steps": 2}) is None


def test_a_step_that_compiles_is_left_out_of_the_measurement_and_listed():
    """The compiled layers compile again for a new kind of batch (a 4k batch holding a
    shorter sample: seconds, once): that step is not throughput. The meter leaves it out
    like the warm-up, says which step it was, and so does the table."""
    import torch
    from types import SimpleNamespace

    bench = load_benchmark("throughput_results")  # measured_indices: throughput_meter's, imported there
    meter = load_benchmark("throughput_meter").make_meter(warmup=1, device="cpu")
    meter.parameters, meter.attention = 1000, "sdpa"
    state = SimpleNamespace(global_step=0, log_history=[{"loss": 2.0}])
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
    for step, tokens in enumerate((100, 200, 300, 400), start=1):
        meter.on_step_begin(None, state, None)
        meter.current.append((torch.tensor(tokens), torch.tensor(tokens // 2), torch.tensor(2)))
        if step in (1, 3):  # the first compile (in the warm-up) and a compile later on
            compiled(torch.ones(step))
        state.global_step = step
        meter.on_step_end(None, state, SimpleNamespace(should_log=False))
    meter.on_train_end(None, state, None)
    run = meter.results()
    assert run["compiled_steps"] == [1, 3] and run["warmup"] == 1 and run["steps"] == 4
    assert run["measured_steps"] == 2 and run["tokens"] == 200 + 400 and run["trained_tokens"] == 100 + 200
    assert run["seconds"] == pytest.approx((run["step_ms"][1] + run["step_ms"][3]) / 1e3, abs=1e-3)
    assert bench.measured_indices(run) == [1, 3]
    record = {"shape": "tiny", "lengths": "sft", "date": "today", "summary": {},
              "settings": {"rounds": 1, "steps": 4, "seed_steps": 4, "warmup": 1},
              "runs": [{**run, "path": "portaft", "round": 1}]}
    assert f"left out for compiling: portaft round 1 step 3 ({run['step_ms'][2] / 1e3:.1f} s); " in bench.markdown([record])
    # several processes: the busiest one's excess over the same measured steps
    ranks = {**run, "rank_step_tokens": [[0, 30, 999, 20], [0, 10, 1, 20]]}
    assert bench.busiest_process_excess(ranks) == pytest.approx(0.25)


def test_rounds_run_apart_merge_into_one_table_and_other_benchmarks_are_refused(tmp_path):
    """--merge: rounds of one benchmark run on two GPUs at once (or in two calls) are one
    table's rounds, renumbered, with the median of all; a file of another benchmark is refused."""
    bench = load_benchmark("throughput_results")

    def record(name, speeds, peak, **changes):
        runs = [{"path": "portaft", "round": i, "batch": 2, "tokens_per_second": speed, "step_seconds": 1.0,
                 "peak_memory_gib": 10.0, "first_losses": [12.0], "settings": {}, "matmul_parameters": 10**9}
                for i, speed in enumerate(speeds, start=1)]
        content = {"benchmark": "throughput", "shape": "deepseek-llm-7b", "lengths": "4k", "date": "2026-11-29",
                   "device": "cuda", "gpu": "NVIDIA H200", "matmul_peak_tflops": peak, "nproc": 1,
                   "settings": {"max_length": 4096, "steps": 12, "seed_steps": 12, "warmup": 3, "logging_steps": 10,
                                "rounds": len(speeds), "lora": bench.LORA},
                   "runs": runs, "out_of_memory": []} | changes
        (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
        return tmp_path / name

    first, second = record("a.json", [100.0, 300.0], 780.0), record("b.json", [200.0], 800.0, date="2026-11-30")
    table = bench.merge([first, second], tmp_path / "out").read_text(encoding="utf-8")
    merged = json.loads((tmp_path / "out" / "throughput-deepseek-llm-7b-4k.json").read_text(encoding="utf-8"))
    assert [r["round"] for r in merged["runs"]] == [1, 2, 3] and merged["settings"]["rounds"] == 3
    summary = merged["summary"]["portaft"]
    assert (summary["tokens_per_second"], summary["min"], summary["max"]) == (200, 100, 300)
    assert merged["matmul_peak_tflops"] == 790.0 and merged["date"] == "2026-11-30"
    assert "rounds merged from 2 runs of the benchmark (2 on 2026-11-29, 1 on 2026-11-30)" in table
    other = record("c.json", [1.0], 800.0, lengths="sft")
    with pytest.raises(SystemExit, match=r"c.json is not the same benchmark as .*a.json: lengths differ"):
        bench.merge([first, other], tmp_path / "refused")
    with pytest.raises(SystemExit, match=r"missing.json is not a result file of bench/throughput.py \(FileNotFound"):
        bench.merge([first, tmp_path / "missing.json"], tmp_path / "refused")


def test_the_sync_finder_leaves_a_process_without_a_gpu_alone(tmp_path):
    """bench/find_syncs is imported by every process of a benchmark, the CPU-only driver too."""
    env = {**os.environ, "FIND_SYNCS": str(tmp_path), "PYTHONPATH": str(REPO / "bench" / "find_syncs")}
    done = subprocess.run([sys.executable, "-c", "import sitecustomize, torch; print(torch.ones(2).sum().item())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0" and list(tmp_path.iterdir()) == []


def test_the_meter_records_full_collections_with_their_step():
    """A run's `full_collections`: each of Python's full garbage collections during training,
    with the step it fell in and its host time (a slow step may be one of them); none are
    recorded before training nor after it."""
    import gc
    import types

    meter = load_benchmark("throughput_meter").make_meter(warmup=0, device="cpu")
    gc.collect()  # before training: not the run's
    state = types.SimpleNamespace(global_step=1)
    meter.on_step_begin(None, state, None)
    gc.collect()
    gc.collect(1)  # a younger generation's: cheap, not recorded
    meter.on_step_end(None, state, types.SimpleNamespace(should_log=False))
    meter.on_train_end(None, types.SimpleNamespace(log_history=[]), None)
    gc.collect()  # after training: not the run's
    assert [step for step, _ in meter.full_collections] == [1]
    assert meter.full_collections[0][1] >= 0


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="needs torch_npu absent")
def test_device_npu_without_torch_npu_says_why_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--device", "npu", "--shape", "tiny",
                           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--device npu: torch_npu is not installed" in done.stderr
    assert not (tmp_path / "work").exists()


def test_the_npu_speed_ups_the_benchmark_names_are_the_npu_backends():
    from portaft.backends.npu import NpuBackend

    settings = load_benchmark("throughput_settings")
    offered = [s.NAME for s in NpuBackend.SPEED_UPS if s.NAME not in ("frozen_objects", "adapter_inputs")]
    assert list(settings.NPU_SPEED_UPS) == offered
