"""`portaft chat`: talk to a trained model in the chat template it was trained with.

Replies are generated as `eval_prompts` answers are (portaft.samples.reply): the
conversation rendered with the template the tokenizer carries, generation ending at
the template's end-of-turn token as well as at eos. They are printed as they come.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import TextStreamer

from portaft.data.templates import stop_token_ids
from portaft.errors import UserError
from portaft.samples import reply

from .trained import base_model, chat_template, load_model, load_tokenizer, read_output

CLEAR, EXIT = "/clear", "/exit"


@dataclass
class Sampling:
    """temperature 0 = greedy (the default); above 0, sampling with top-k and top-p."""

    temperature: float = 0.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.temperature < 0, f"--temperature {self.temperature}: 0 (greedy) or more"),
            (self.top_k < 0, f"--top-k {self.top_k}: 0 (no limit) or more"),
            (not 0 < self.top_p <= 1, f"--top-p {self.top_p}: above 0, at most 1"),
            (self.max_new_tokens < 1, f"--max-new-tokens {self.max_new_tokens}: 1 or more"),
        ) if bad]
        if problems:
            raise UserError("; ".join(problems) + ".")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass
class Session:
    """One conversation: the model, its template, the system prompt and the turns so far."""

    model: Any
    tokenizer: Any
    template: str
    system: str | None
    sampling: Sampling
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stops = stop_token_ids(self.tokenizer, self.template)

    def ask(self, text: str) -> str:
        """The reply to `text` after the turns so far, printed on stdout as it is generated."""
        turn = {"role": "user", "content": text}
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        answer = reply(self.model, self.tokenizer, self.template, system + self.history + [turn], self.stops,
                       self.sampling.max_new_tokens, streamer=ReplyStreamer(self.tokenizer),
                       **self.sampling.generate_kwargs())
        self.history += [turn, {"role": "assistant", "content": answer}]
        return answer

    def clear(self) -> None:
        self.history = []


class ReplyStreamer(TextStreamer):
    """transformers' TextStreamer, printing the reply as `reply` returns it: without the
    whitespace a template puts around it, then a newline."""

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.pending, self.started = "", False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        text = self.pending + text
        if not self.started:
            text = text.lstrip()
        shown = text.rstrip()
        self.pending = text[len(shown):]  # held back until more text follows it
        self.started = self.started or bool(shown)
        print(shown, end="\n" if stream_end else "", flush=True)
        if stream_end:
            self.pending, self.started = "", False


def open_session(path: str | Path, system: str | None = None, device: str = "auto", base: str | None = None,
                 sampling: Sampling | None = None, echo: Callable[[str], None] = print) -> Session:
    """A conversation with the model in `path`: a portaft run output (adapter or full), a
    checkpoint of one, a merged folder, or any model folder whose tokenizer has a chat template.

    `system` None = the run recipe's `system:` (if any); "" = no system prompt."""
    trained = read_output(path)
    tokenizer = load_tokenizer(trained, base)
    template = chat_template(tokenizer)
    if template is None:
        raise UserError(f"{path}: its tokenizer has no chat template, so portaft cannot know how to lay out a "
                        "conversation for this model. Give a portaft run's output folder (its tokenizer carries the "
                        "template it trained with) or a model folder whose tokenizer has a chat_template.")
    device_type = pick_device(device)
    dtype = "float32" if device_type == "cpu" else trained.trained_dtype  # half precision is slow on CPUs
    what = f"{base_model(trained, base)[0]} + adapter {trained.folder}" if trained.adapter else str(trained.folder)
    echo(f"portaft: loading {what} on {device_type} ({dtype})")
    model = load_model(trained, dtype, base).to(device_type).eval()
    system = trained.system if system is None else (system or None)
    return Session(model, tokenizer, template, system, sampling or Sampling())


def pick_device(name: str) -> str:
    """The torch device of the backend called `name`; auto = the available backend with the
    highest priority (npu > cuda > cpu), as `portaft run` picks. A named one must be available."""
    from portaft.errors import BackendUnavailable
    from portaft.plugins import get_plugins

    try:
        return get_plugins().select_backend(name).device_type
    except BackendUnavailable as exc:
        raise UserError(f"--device {name}: {exc}") from None


def converse(session: Session, echo: Callable[[str], None]) -> None:
    """Turns read from stdin until /exit or end of input; /clear starts the conversation over."""
    prompt = ">>> " if sys.stdin.isatty() else ""
    echo(f"portaft: type a message; {CLEAR} starts over, {EXIT} or Ctrl-D quits")
    while True:
        try:
            text = input(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            break
        if text == EXIT:
            break
        if text == CLEAR:
            session.clear()
            echo("portaft: conversation cleared")
        elif text:
            try:
                session.ask(text)
            except KeyboardInterrupt:  # stop this reply, keep the conversation
                print(flush=True)
                echo("portaft: reply interrupted (not kept in the conversation)")
