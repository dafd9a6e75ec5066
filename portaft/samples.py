"""The model's replies, rendered with the run's chat template: greedy answers to the
recipe's `eval_prompts`, and one reply at a time for `portaft chat`."""

from __future__ import annotations

from typing import Any

from portaft.data.templates import render, stop_token_ids


def answer_prompts(model: Any, tokenizer: Any, template: str, prompts: list, max_new_tokens: int = 48,
                   system: str | None = None) -> list[dict]:
    """Greedy answers to questions (strings) or conversations (lists of {role, content}
    ending with the user's turn); `system` (the recipe's) is given to each as in
    training, unless a conversation has its own."""
    answers = []
    was_training = model.training
    model.eval()
    stops = stop_token_ids(tokenizer, template)  # e.g. ChatML's <|im_end|> as well as eos
    for prompt in prompts:
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [_turn(t) for t in prompt]
        own_system = any(t["role"] == "system" for t in turns)
        messages = ([{"role": "system", "content": system}] if system is not None and not own_system else []) + turns
        item = {"prompt": turns[-1]["content"]}
        if len(turns) > 1:
            item["conversation"] = turns
        item["answer"] = reply(model, tokenizer, template, messages, stops, max_new_tokens)
        answers.append(item)
    model.train(was_training)
    return answers


def _turn(turn: Any) -> dict:
    return turn if isinstance(turn, dict) else {"role": turn.role, "content": turn.content}


def reply(model: Any, tokenizer: Any, template: str, messages: list[dict], stops: list[int],
          max_new_tokens: int = 48, streamer: Any = None, **sampling: Any) -> str:
    """The model's next assistant reply to `messages`, rendered with `template` as in
    training; it ends at any of `stops` (stop_token_ids). Greedy unless `sampling` holds
    do_sample=True and its settings; `streamer` (transformers' TextStreamer) sees the
    tokens as they come."""
    import torch

    device = next(model.parameters()).device
    text = render(tokenizer, template, messages, add_generation_prompt=True)
    encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    ids = {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}
    with torch.no_grad(), _half_precision_autocast(model, device):
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            **({"do_sample": False} | sampling),
            eos_token_id=stops,
            # what generate falls back to anyway, without its warning
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
            streamer=streamer,
        )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _half_precision_autocast(model: Any, device: Any) -> Any:
    """A bfloat16/float16 model generates under autocast, as it trains: its float32 adapter
    weights then meet half-precision inputs (adapters.keep_inputs_in_compute_dtype)."""
    import contextlib

    import torch

    from portaft.compat import autocast

    dtype = getattr(model, "dtype", None)
    if dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    return autocast(device.type, dtype)
