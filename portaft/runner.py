"""The spine of a run, top to bottom as ARCHITECTURE.md lists the steps."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .recipe import RecipeSource, load_recipe


@dataclass
class RunResult:
    output_dir: Path
    backend: str
    notes: list[str]
    metrics: dict[str, Any]
    log_history: list[dict]
    samples_before: list[dict] = field(default_factory=list)
    samples_after: list[dict] = field(default_factory=list)
    samples_during: list[dict] = field(default_factory=list)  # [{"step": N, "answers": [...]}]


def run(
    recipe: RecipeSource,
    backend: str | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Fine-tune as the recipe says; return where the adapter went and what happened.

    `recipe` is a YAML path, a dict or a Recipe; `backend` overrides the recipe's.
    """
    from transformers import set_seed
    from transformers.trainer_callback import ProgressCallback

    from . import checkpoints, data, tracking
    from .adapters import prepare_for_training, trainable_summary
    from .callbacks import AnswersWhileTraining, FrozenLongLivedObjects, ReadableProgress
    from .compat import numpy_in_checkpoints
    from .outputs import library_versions, peak_device_memory_gib, write_recipe, write_run
    from .plugins import choose_backend

    started = time.time()
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if rank != 0:
        echo = _silent  # under torchrun every process runs this; the first one speaks
    # 1. recipe
    recipe = load_recipe(recipe, overrides)
    # 2. backend
    chosen = choose_backend(recipe, backend)
    echo(f"portaft: backend {chosen.name} (device {'cpu' if recipe.device == 'cpu' else chosen.device_type})")
    # 3. resolve: the recipe this backend really runs, every change reported
    effective, notes = chosen.resolve(recipe)
    effective.backend = chosen.name
    notes += data.packing.resolve_packing(effective)
    if world_size > 1 and not effective.train.get("ddp_backend"):
        effective.train["ddp_backend"] = chosen.distributed_backend
        notes.append(f"train.ddp_backend: unset -> {chosen.distributed_backend} ({world_size} processes on {chosen.name})")
    if world_size > 1 and effective.finetune == "lora" and "ddp_find_unused_parameters" not in effective.train:
        # transformers would say true for a peft model: DDP then walks the whole autograd
        # graph after every backward looking for weights without gradients (as LLaMA-Factory does)
        effective.train["ddp_find_unused_parameters"] = False
        notes.append("train.ddp_find_unused_parameters: unset -> false (every adapter weight gets a gradient in "
                     "every step, so DDP need not search the graph for unused ones)")
    # experiment trackers: train.report_to made explicit and checked before any model loads
    tracked = tracking.prepare(effective)
    notes += tracked.notes
    # checkpoints are rotated by portaft, counting only complete ones (checkpoints.py)
    keep = effective.train.get("save_total_limit")
    args = chosen.training_arguments(**{"remove_unused_columns": False, **effective.train, "save_total_limit": None,
                                        "report_to": tracked.report_to})
    notes += _one_device_per_process(args, world_size)
    # where training starts: step 0, a checkpoint of this same run, or nothing to do
    identity = checkpoints.training_identity(effective)
    start = checkpoints.plan_start(effective, identity)
    if start.finished is not None:
        if world_size > 1:
            _leave_process_group_at_exit()  # the training arguments have set it up
        return _already_finished(start.finished, chosen.name, notes, effective, echo)
    if rank == 0:
        checkpoints.clear(start)
    notes += start.notes
    # 4. tokenizer (the model is loaded after the data, which may still be refused)
    tokenizer = chosen.load_tokenizer(effective)
    notes += data.prepare_tokenizer(tokenizer)
    for note in notes:
        echo(f"portaft: {note}")
    # 5. data: encoded, mixed; with packing, token-budget batches. The first process
    # encodes (and fills datasets' cache) before the others read it.
    with args.main_process_first(desc="portaft data"):
        built = data.build(effective, tokenizer)
    for r in built.reports:
        echo(f"portaft: {data.describe(r, effective.max_length)}")
    for line in built.warnings[:1 + data.SHOWN_PROBLEMS]:
        echo(f"portaft: warning: {line}")
    template = built.template
    collator = chosen.collator(tokenizer) or data.Seq2SeqCollator(tokenizer)
    sampler, balanced = None, False
    if effective.packing:
        sampler, collator, note = data.packing.packed_batches(built.lengths, effective)
        notes.append(note)
        echo(f"portaft: {note}")
    elif getattr(chosen, "padding_free", lambda _: False)(effective):
        collator = data.packing.flattening_collator()
        note = ("batches: padding-free (each batch's samples flattened into one row with their own position ids: "
                "no pad tokens computed, the same loss as padded)")
        notes.append(note)
        echo(f"portaft: {note}")
        balanced = world_size > 1 and getattr(chosen, "balanced_processes", lambda _: False)(effective)
        if balanced:
            note = (f"batches: each step's samples shared out between the {world_size} processes by their tokens "
                    "(the same samples a step, so the same loss; a step waits for its busiest process)")
            notes.append(note)
            echo(f"portaft: {note}")
    # the model; LoRA's initial weights come from the seeded RNG: same seed, same run
    set_seed(int(effective.train.get("seed", 42)))
    model = chosen.load_model(effective)
    _check_vocabulary(model, tokenizer, effective)
    model = prepare_for_training(model, effective.finetune, effective.lora,
                                 bool(effective.train.get("gradient_checkpointing")), effective.quantization is not None,
                                 mixed_precision=bool(effective.train.get("bf16") or effective.train.get("fp16")))
    for note in getattr(chosen, "speed_up", lambda *_: [])(model, effective):  # optional: faster kernels, same loss
        notes.append(note)
        echo(f"portaft: {note}")
    echo(f"portaft: {trainable_summary(model)}")
    # 6. train
    output_dir = Path(effective.train["output_dir"])
    tokenizer.chat_template = template  # checkpoints and the output carry the template trained with
    trainer = chosen.trainer(model=model, args=args, train_dataset=built.dataset, data_collator=collator, tokenizer=tokenizer)
    if sampler is not None:
        data.packing.use_packed_batches(trainer, sampler, collator)
    if balanced:
        data.shares.share_steps_by_tokens(trainer, built.lengths)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ReadableProgress)
    for callback in tracked.callbacks:  # plugins' (register_callbacks)
        trainer.add_callback(callback)
    trainer.add_callback(checkpoints.CompleteCheckpoints(identity, keep))
    loss_watch = checkpoints.LossWatch()
    loss_watch.watch(trainer)
    trainer.add_callback(loss_watch)
    ask = functools.partial(_answer_and_show, tokenizer=tokenizer, template=template, system=effective.system,
                            prompts=effective.eval_prompts if rank == 0 else [], device=args.device, echo=echo)
    during = AnswersWhileTraining(ask, effective.eval_every) if effective.eval_every else None
    if during is not None:
        trainer.add_callback(during)
    before = ask("before training", trainer.model)
    if start.checkpoint is not None:
        echo(f"portaft: resuming from {start.checkpoint} (step {start.step}); same recipe and data as the run "
             "that wrote it")
    frozen = FrozenLongLivedObjects()
    if frozen.active:
        trainer.add_callback(frozen)
        note = ("host: the objects alive after set-up and the first 3 steps frozen out of Python's garbage "
                "collector (gc.freeze): a full collection walks them all, about 300 ms on whichever step it falls")
        notes.append(note)
        echo(f"portaft: {note}")
    try:
        with numpy_in_checkpoints():
            output = trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
    finally:
        frozen.unfreeze()
    if loss_watch.bad_step is not None:
        raise _diverged(loss_watch, output_dir)
    after = ask("after training", trainer.model)
    # 7. save: the adapter (or, finetune: full, the whole model) + tokenizer carrying the
    # template it was trained with, the effective recipe and the run record
    trainer.save_model(str(output_dir))  # the Trainer saves from the first process only
    result = RunResult(output_dir, chosen.name, notes, dict(output.metrics), list(trainer.state.log_history), before, after,
                       during.during if during is not None else [])
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
        write_recipe(output_dir, effective, notes)
        record = {
            "backend": chosen.name,
            "device": str(args.device),
            "processes": world_size,
            "template": built.template_name,
            "versions": library_versions(),
            "identity": identity,
            "resumed_from": str(start.checkpoint) if start.checkpoint else None,
            "notes": notes,
            "data": data.report_rows(built.reports),
            "skipped": built.warnings[1:],
            "metrics": result.metrics,
            "peak_memory_gib": peak_device_memory_gib(args.device),
            "log_history": result.log_history,
            "samples": {"before": before, "during": result.samples_during, "after": after},
            "seconds": round(time.time() - started, 1),
        }
        write_run(output_dir, record)
        _write_report(output_dir, record, echo)
        echo(f"portaft: adapter saved in {output_dir}")
    if world_size > 1:
        # every process returns once the run's output is complete, not while the first still writes
        trainer.accelerator.wait_for_everyone()
        _leave_process_group_at_exit()
    return result


def _silent(_: str) -> None:
    pass


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _leave_process_group_at_exit() -> None:
    """A process group still alive when the interpreter shuts down is torn down by its
    C++ destructors in no promised order: in CI a process that had trained well once died
    there with SIGABRT ("terminate called without an active exception", gloo) and torchrun
    failed the run. Leave it before that, as accelerate's end_training and LLaMA-Factory do;
    at exit, not here, because a script may still use the group after run() returns."""
    import atexit

    atexit.unregister(_leave_process_group)  # once, however many runs the script makes
    atexit.register(_leave_process_group)


def _one_device_per_process(args: Any, world_size: int) -> list[str]:
    """One process that sees several GPUs would have transformers split every batch over
    them with nn.DataParallel: slower than DDP, and a flattened (one-row) batch cannot be
    split at all. Train on the first and say how to use them all."""
    gpus = getattr(args, "n_gpu", 1)
    if world_size > 1 or gpus <= 1:
        return []
    args._n_gpu = 1  # what transformers' Trainer itself sets to keep DataParallel out
    return [f"{gpus} GPUs are visible to this one process: training on {args.device} only; "
            f"`portaft run --nproc {gpus} ...` trains on all {gpus} (one process each, DDP)"]


def _check_vocabulary(model: Any, tokenizer: Any, recipe: Any) -> None:
    """A tokenizer with ids past the model's embeddings ends in a device-side assert on a
    GPU (an index error on the CPU): say what is wrong instead."""
    from .errors import UserError

    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"model.name_or_path: the tokenizer in {recipe.model.name_or_path} has {len(tokenizer):,} tokens "
                        f"but the model only {rows:,} embeddings: they do not belong together. Use the tokenizer "
                        "saved with this model.")


def _write_report(output_dir: Path, record: dict, echo: Callable[[str], None]) -> None:
    """report.md and loss.png are for people: a failure there warns, it never costs a finished run."""
    from .report import write_report

    try:
        chart, report = write_report(output_dir, record)
    except Exception as exc:  # noqa: BLE001 (whatever broke, the adapter and portaft_run.json are saved)
        echo(f"portaft: warning: no report written ({type(exc).__name__}: {exc}); the run is complete, "
             f"its record is {output_dir / 'portaft_run.json'}")
        return
    echo(f"portaft: report in {report}, loss chart in {chart}")


def _already_finished(record: dict, backend: str, notes: list[str], recipe: Any, echo: Callable[[str], None]) -> RunResult:
    output_dir = Path(recipe.train["output_dir"])
    steps = next((e.get("step") for e in reversed(record.get("log_history", [])) if "step" in e), "?")
    echo(f"portaft: {output_dir} already holds this run, finished at step {steps}: nothing to do. "
         "To train it again: resume: false and overwrite: true (on the command line: resume=false overwrite=true).")
    samples = record.get("samples", {})
    return RunResult(output_dir, backend, notes, record.get("metrics", {}), record.get("log_history", []),
                     samples.get("before", []), samples.get("after", []), samples.get("during", []))


def _diverged(watch: Any, output_dir: Path) -> Exception:
    from .checkpoints import TrainingDiverged, checkpoint_folders, is_complete

    good = [(s, p) for s, p in checkpoint_folders(output_dir) if is_complete(p)]
    kept = (f"The last good checkpoint is {good[-1][1]} (step {good[-1][0]}); no adapter was saved from the "
            "bad weights." if good else "No checkpoint was written before it, so nothing was saved.")
    return TrainingDiverged(
        f"train: the loss became {watch.bad_value} at step {watch.bad_step}; training stopped. {kept}\n"
        "Lower train.learning_rate, raise train.warmup_steps or lower train.max_grad_norm; with train.fp16 "
        "try bf16 (fp16 overflows). Check the data for empty or huge samples (portaft preview). A changed "
        "recipe cannot resume this run: set resume: false and overwrite: true to start over."
    )


def _answer_and_show(when: str, model: Any, *, tokenizer: Any, template: str, system: str | None,
                     prompts: list[str], device: Any, echo: Callable[[str], None]) -> list[dict]:
    from .samples import answer_prompts

    if not prompts:
        return []
    model.to(device)  # before training the Trainer has not placed the model yet
    answers = answer_prompts(model, tokenizer, template, prompts, system=system)
    for item in answers:
        echo(f"portaft: {when}: Q: {item['prompt']}\n         A: {item['answer']}")
    return answers
