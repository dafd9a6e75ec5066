"""Kinds of data portaft cannot train as supervised chat, found record by record.

A record of such a kind is never trained as plain SFT: it is refused, or skipped and
counted (skip_bad_samples), with the kind named in the words a user searches for and
what to do. Tool calling and reasoning are kinds too, but only when the chat template
cannot render them (`needs` of a conversation, checked against the template's
abilities).
"""

from __future__ import annotations

import re
from typing import Any


class BadSample(ValueError):
    """A record that cannot become a conversation; the message names the field.

    `reason`: a few words that group such records in the count of skipped ones."""

    def __init__(self, message: str, reason: str = "bad field"):
        super().__init__(message)
        self.reason = reason


class KindError(BadSample):
    """A record of a kind portaft does not train as supervised chat."""


PREFERENCE = "preference (DPO) data"
KTO = "KTO data (desirable/undesirable label)"
MULTIMODAL = "multimodal data (images, audio, video)"
TOOLS = "tool calling (function calls)"
REASONING = "reasoning (reasoning_content)"

_WHAT_TO_DO = {
    PREFERENCE: "portaft trains supervised fine-tuning only. To train the chosen replies as SFT, write them as "
                "ordinary replies (drop `rejected`); for DPO use TRL's DPOTrainer or LLaMA-Factory (stage: dpo)",
    KTO: "portaft trains supervised fine-tuning only, and would train undesirable replies as targets. Keep only "
         "the desirable records, without the label, or use TRL's KTOTrainer or LLaMA-Factory (stage: kto)",
    MULTIMODAL: "portaft trains text-only models and would train the placeholder as text while the image, audio "
                "or video is dropped. Remove the media and placeholders, or use a multimodal trainer "
                "(LLaMA-Factory, ms-swift)",
}

PREFERENCE_KEYS = ("chosen", "rejected", "rejected_response", "chosen_messages", "rejected_messages")
MEDIA_KEYS = ("images", "image", "videos", "video", "audios", "audio")
PLACEHOLDER = re.compile(r"<(?:image|video|audio)>|<img>.*?</img>", re.DOTALL)


def kind_error(kind: str, detail: str, what_to_do: str | None = None) -> KindError:
    return KindError(f"{kind}: {detail}. {what_to_do or _WHAT_TO_DO[kind]}.", reason=kind)


KIND_KEYS = frozenset((*PREFERENCE_KEYS, *MEDIA_KEYS, "kto_tag", "label"))


def record_kind(record: dict) -> None:
    """Raise KindError when the record's own keys say it is not supervised chat data."""
    if KIND_KEYS.isdisjoint(record):  # the common case, in one set operation
        return
    for key in PREFERENCE_KEYS:
        if record.get(key) not in (None, "", []):
            raise kind_error(PREFERENCE, f"the record has `{key}`")
    if record.get("kto_tag") is not None:
        raise kind_error(KTO, "the record has `kto_tag`")
    if isinstance(record.get("label"), bool):
        raise kind_error(KTO, f"the record has `label: {str(record['label']).lower()}`")
    for key in MEDIA_KEYS:
        if record.get(key) not in (None, "", []):
            raise kind_error(MULTIMODAL, f"the record has `{key}`")


def check_placeholders(text: str, where: str) -> None:
    """A media placeholder (<image>, <video>, <audio>, Qwen-VL's <img>...</img>) in text."""
    found = PLACEHOLDER.search(text)
    if found:
        raise kind_error(MULTIMODAL, f"{where} holds the placeholder {found.group(0)[:40]!r}")


def media_part(part: Any, where: str) -> None:
    """An OpenAI/Anthropic content part that carries media rather than text."""
    kind = part.get("type") if isinstance(part, dict) else None
    if isinstance(kind, str) and any(word in kind for word in ("image", "audio", "video", "file")):
        raise kind_error(MULTIMODAL, f"{where} is a {kind!r} part")


def unsupported_need(need: str, template: str) -> KindError:
    """A conversation needs what the chat template cannot render (tools, reasoning)."""
    if need == "tools":
        return kind_error(TOOLS, f"the chat template {template!r} does not render tools or tool calls, so they "
                          "would be dropped", "Use a template with tool support (template: qwen, or a tokenizer "
                          "whose own chat template takes `tools`), or remove the tool calls")
    return kind_error(REASONING, f"the chat template {template!r} does not render `reasoning_content`, so the "
                      "reasoning would be dropped", "Use a template that renders it (a Qwen3-style tokenizer "
                      "template: template: tokenizer), write the reasoning into the reply's content, or remove it")
