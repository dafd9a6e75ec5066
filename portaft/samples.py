"""Greedy answers to the recipe's `eval_prompts`, rendered with the run's chat template."""

from __future__ import annotations

from typing import Any

from .data.templates import render, stop_token_ids


def answer_prompts(model: Any, tokenizer: Any, template: str, prompts: list[str], max_new_tokens: int = 48,
                   system: str | None = None) -> list[dict]:
    """Greedy answers; `system` (the recipe's) is given to each prompt as in training."""
    import torch

    answers = []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, template)  # e.g. ChatML's <|im_end|> as well as eos
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": prompt}]
        text = render(tokenizer, template, messages, add_generation_prompt=True)
        encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        ids = {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append({"prompt": prompt, "answer": answer.strip()})
    model.train(was_training)
    return answers
