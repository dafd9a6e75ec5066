"""From records to training rows, a batch at a time: normalise, render, tokenize, mask, truncate.

One batched `datasets.map` does everything, so the tokenizer sees whole batches
(its Rust side runs them in parallel) and nothing is written to disk in between.
Every row comes out with an `error` (empty when the record is good) instead of
raising, so one pass finds every bad record in a file.
"""

from __future__ import annotations

import functools
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np

from .formats import Conversation, Format, PretrainText, normalise, record_problem, record_reason
from .kinds import unsupported_need
from .sources import records_of
from .templates import TemplateError, reply_shape, template_abilities, trained_spans

IGNORE = -100

# `cut` column: where max_length cut the sample
NOT_CUT, CUT_IN_REPLY, CUT_IN_PROMPT = 0, 1, 2


@dataclass
class EncodeSettings:
    template: str  # Jinja source
    max_length: int
    train_on: str  # "assistant" | "last_assistant" | "all"
    system: str | None  # replaces or adds the system prompt of every conversation
    template_name: str = "tokenizer"  # named in a record's error


class Encoder:
    """Picklable (for datasets' num_proc): the compiled template is rebuilt in each process."""

    def __init__(self, tokenizer: Any, fmt: Format, settings: EncodeSettings):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.settings = settings
        self._render = None
        self._shape: tuple[str, str] | None = None
        self._abilities: frozenset = frozenset()
        self._text_ends = ("", "")  # what surrounds pretraining text: (bos where the tokenizer adds one, eos)
        # datasets caches map results under a hash of this object; functions are pickled by
        # name, so the code itself goes in too: a changed portaft or format never hits a stale cache
        self.code = code_fingerprint(fmt.to_messages)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_render": None, "_shape": None}

    def _compiled(self) -> Any:
        if self._render is None:
            from portaft.compat import chat_template_renderer

            self._render = chat_template_renderer(self.tokenizer, self.settings.template)
            self._shape = reply_shape(self._render)
            self._abilities = template_abilities(self._render)
            self._text_ends = pretraining_ends(self.tokenizer)
        return self._render

    def conversation(self, record: dict) -> Conversation | PretrainText:
        messages = normalise(record, self.fmt)
        system = self.settings.system
        if system is not None and not isinstance(messages, PretrainText):
            replaced = messages[0]["role"] == "system"
            changed = Conversation([{"role": "system", "content": system}] + messages[1 if replaced else 0:])
            changed.tools, changed.needs = messages.tools, messages.needs
            changed.untrained = frozenset(i + (0 if replaced else 1) for i in messages.untrained)
            messages = changed
        return messages

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Render a chunk, hand it to the tokenizer on a second thread (the Rust tokenizer
        runs without the GIL), render the next chunk meanwhile; then mask them all."""
        records = records_of(batch)
        size = len(records)
        pending, errors, reasons, plain = [], [], [], []
        for start in range(0, size, CHUNK):
            texts, spans = self._render_chunk(records[start:start + CHUNK], errors, reasons, plain)
            pending.append((_tokenizer_thread().submit(encode_texts, self.tokenizer, texts), spans))
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "trained": [],
                                "cut": [], "error": errors, "reason": reasons,
                                "pretraining": plain}
        for future, spans in pending:
            for ids, ranges in locate(future.result(), spans):
                ids, labels, cut = mask_and_truncate(ids, ranges, self.settings.max_length)
                out["input_ids"].append(ids)
                out["attention_mask"].append(np.ones_like(ids))
                out["labels"].append(labels)
                out["length"].append(len(ids))
                out["trained"].append(int(np.count_nonzero(labels != IGNORE)))
                out["cut"].append(cut)
        return out

    def _render_chunk(self, records: list[dict], errors: list[str], reasons: list[str], plain: list[int]
                      ) -> tuple[list[str], list[Ranges]]:
        render = self._compiled()
        texts, spans = [], []
        for record in records:
            text, trained, problem, reason, messages = "", [], "", "", None
            try:
                messages = self.conversation(record)
                if isinstance(messages, PretrainText):  # continued pretraining: no template, every token
                    text = self._text_ends[0] + messages + self._text_ends[1]
                    trained = [(0, len(text))]
                elif messages.needs and messages.needs - self._abilities:
                    raise unsupported_need(max(messages.needs - self._abilities), self.settings.template_name)
            except Exception as exc:  # the same words `portaft validate` prints for this record
                problem, reason = record_problem(exc), record_reason(exc)
            else:
                try:
                    if not trained:
                        text, trained = trained_spans(render, messages, self.settings.train_on, self._shape,
                                                      messages.tools)
                except TemplateError as exc:
                    problem, reason = str(exc), "template cannot mask it"
                except Exception as exc:  # e.g. a template's raise_exception
                    problem, reason = f"cannot be rendered: {type(exc).__name__}: {exc}", "cannot be rendered"
            errors.append(problem)
            reasons.append(reason)
            plain.append(int(isinstance(messages, PretrainText) and not problem))
            texts.append(text)
            spans.append(trained)
        return texts, spans


CHUNK = 250  # records rendered before their tokenization starts


def pretraining_ends(tokenizer: Any) -> tuple[str, str]:
    """(before, after) pretraining text: the bos token where the tokenizer itself puts one
    before plain text (Llama, DeepSeek; not Qwen), and eos, so documents stay apart when
    packed (LLaMA-Factory appends eos the same way)."""
    bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None) or ""
    if bos is not None:
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        if not ids or ids[0] != tokenizer.bos_token_id:
            bos = None
    return bos or "", eos

_threads: dict[int, Any] = {}


def _tokenizer_thread() -> Any:
    """One worker thread per process (a forked datasets worker gets its own)."""
    from concurrent.futures import ThreadPoolExecutor

    pid = os.getpid()
    if pid not in _threads:
        _threads[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portaft-tokenize")
    return _threads[pid]


Ranges = list[tuple[int, int]]  # [first, end) token indices


def encode_texts(tokenizer: Any, texts: list[str]) -> Any:
    """Tokenize without special tokens. When the tokenizer's Rust backend has no
    truncation or padding of its own, its encode_batch is called directly: it runs
    without the GIL (so rendering goes on meanwhile) and returns Encodings whose spans
    are found with char_to_token, without converting every offset to Python."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return backend.encode_batch(texts, add_special_tokens=False)


def locate(encoded: Any, spans: list[Ranges]) -> list[tuple[list[int], Ranges]]:
    """Token ids of each text and, for each of its character spans, the range of tokens
    that overlap it. Tests keep both paths equal, and the ids equal to apply_chat_template."""
    if isinstance(encoded, list):  # tokenizers.Encoding objects
        located = []
        for encoding, sp in zip(encoded, spans):
            ranges = ranges_from_encoding(encoding, sp)
            located.append((encoding.ids, ranges if ranges is not None else ranges_from_offsets(encoding.offsets, sp)))
        return located
    return [(ids, ranges_from_offsets(offsets, sp))
            for ids, offsets, sp in zip(encoded["input_ids"], encoded["offset_mapping"], spans)]


def ranges_from_offsets(offsets: list[tuple[int, int]], spans: Ranges) -> Ranges:
    """Tokens overlapping each span: from the first token ending after its start to the
    last token starting before its end (offsets rise monotonically)."""
    starts, ends = zip(*offsets) if offsets else ((), ())
    return [(bisect_right(ends, start), bisect_left(starts, end)) for start, end in spans]


def ranges_from_encoding(encoding: Any, spans: Ranges) -> Ranges | None:
    """The same through a tokenizers.Encoding; None when a span's edge is in no token."""
    ranges = []
    count = len(encoding)
    for start, end in spans:
        if end <= start:
            ranges.append((0, 0))
            continue
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None
        while first > 0 and encoding.token_to_chars(first - 1)[1] > start:
            first -= 1  # an earlier token shares the span's first character
        while last + 1 < count and encoding.token_to_chars(last + 1)[0] < end:
            last += 1  # a later token shares the span's last character
        ranges.append((first, last + 1))
    return ranges


@functools.lru_cache(maxsize=None)  # once per format function, not once per file of a folder source
def code_fingerprint(*functions: Any) -> str:
    import hashlib
    import inspect
    from pathlib import Path

    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.read_bytes())
    for function in functions:
        try:
            digest.update(inspect.getsource(function).encode())
        except (OSError, TypeError):  # no source available: its qualified name is all there is
            digest.update(getattr(function, "__qualname__", repr(function)).encode())
    return digest.hexdigest()


def mask_and_truncate(ids: list[int], ranges: Ranges, max_length: int) -> tuple[Any, Any, int]:
    """(input_ids, labels, cut) as int64 arrays: labels = ids on the trained token ranges,
    IGNORE elsewhere; then cut to max_length. (datasets writes numpy arrays to Arrow
    several times faster than lists of Python ints.)

    The first token's label is always IGNORE: no token predicts it, and saying so
    keeps the count of trained tokens equal between padded and packed batches.
    A cut that lands in a prompt drops the untrained tail, which teaches nothing.
    """
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.full_like(ids, IGNORE)
    for first, end in ranges:
        labels[first:end] = ids[first:end]
    if len(labels):
        labels[0] = IGNORE
    if len(ids) <= max_length:
        return ids, labels, NOT_CUT
    ids, labels = ids[:max_length], labels[:max_length]
    if labels[-1] != IGNORE:
        return ids, labels, CUT_IN_REPLY
    trained = np.flatnonzero(labels != IGNORE)
    keep = int(trained[-1]) + 1 if len(trained) else 0
    return ids[:keep], labels[:keep], CUT_IN_PROMPT
