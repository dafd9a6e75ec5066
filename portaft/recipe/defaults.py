"""What portaft sets where a recipe is silent and transformers' own default would not
serve a fine-tune: each is written into the effective recipe (portaft_recipe.yaml) with
a note saying where it came from. A value the recipe gives is never changed here."""

from __future__ import annotations

from .schema import Recipe

# transformers' 5e-5 is a full fine-tune's rate: a LoRA adapter barely moves with it
# (LLaMA-Factory, ms-swift and PEFT's examples train adapters at 1e-4 to 2e-4)
LORA_LEARNING_RATE = 2e-4
# transformers logs every 500 steps: a short run draws no curve at all. A number below
# 1 is a fraction of the run's steps (TrainingArguments.logging_steps, rounded up to
# whole steps), so 0.025 logs every step of a run under 40 steps and 20 to 40 points
# of any longer one
LOGGING_STEPS = 0.025
# evaluating costs a pass over the eval data: 10 times a run, unless the recipe says
EVAL_STEPS = 0.1


def apply_defaults(recipe: Recipe) -> list[str]:
    """Fill in portaft's defaults in `recipe.train`, in place; one note per value set."""
    train, notes = recipe.train, []
    if recipe.finetune == "lora" and "learning_rate" not in train:
        train["learning_rate"] = LORA_LEARNING_RATE
        notes.append(f"train.learning_rate: unset -> {LORA_LEARNING_RATE:g} (portaft's LoRA default; "
                     "transformers' 5e-05 is for full fine-tuning and barely moves an adapter)")
    strategy = train.get("logging_strategy") or "steps"
    if "logging_steps" not in train and str(getattr(strategy, "value", strategy)) == "steps":
        train["logging_steps"] = LOGGING_STEPS
        notes.append(f"train.logging_steps: unset -> {LOGGING_STEPS:g} (portaft's default: every 2.5% of the steps, "
                     "at least 20 points on the loss curve however long the run; transformers logs every 500 steps)")
    key = "evaluation_strategy" if "evaluation_strategy" in train else "eval_strategy"
    if key not in train and (recipe.val_size or recipe.eval_data or any(s.val_size for s in recipe.data)):
        train["eval_strategy"] = "steps"
        notes.append("train.eval_strategy: unset -> steps (the recipe has eval data: eval_loss is logged beside the "
                     "training loss, every train.eval_steps)")
    if str(getattr(train.get("eval_strategy"), "value", train.get("eval_strategy"))) == "steps" \
            and "eval_steps" not in train:
        train["eval_steps"] = EVAL_STEPS
        notes.append(f"train.eval_steps: unset -> {EVAL_STEPS:g} (portaft's default: an evaluation every 10% of the "
                     "steps; transformers would evaluate at every logging step)")
    if "remove_unused_columns" not in train:
        train["remove_unused_columns"] = False
        notes.append("train.remove_unused_columns: unset -> false (portaft's rows hold only the model's inputs; "
                     "transformers' true would check them against the forward signature, which a wrapped model hides)")
    return notes
