"""The tokenizer as GGUF metadata: vocabulary, merges or scores, token types, special ids,
the pre-tokenizer llama.cpp must apply, and the chat template the run trained with.

Byte-level BPE tokenizers (DeepSeek, Llama 3, Qwen) are written as llama.cpp's "gpt2"
model; SentencePiece ones (Llama 2, InternLM2) as its "llama" model. The special ids and
merges are read by the `gguf` package's SpecialVocab, as llama.cpp's converter does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portaft.errors import UserError

# llama.cpp tells BPE pre-tokenizers apart by the sha256 of the ids of this text
# (convert_hf_to_gguf.py, get_vocab_base_pre); the names below are the ones its
# tokenizer (src/llama-vocab.cpp) knows, for the tokenizers of the models portaft trains.
CHECK_TEXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
              '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
              '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
              '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
KNOWN_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",  # deepseek-llm-7b-base
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",  # deepseek-coder-6.7b-base
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",  # DeepSeek-V3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B (Qwen2, 2.5)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding-0.6B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen
}


@dataclass
class TokenizerMeta:
    model: str  # llama.cpp's tokenizer model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: int
    add_bos: bool
    special_ids: dict[str, int]


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer. The ids are hashed as llama.cpp
    does, with and without a leading bos (a run's saved tokenizer may add it where the hub's did not)."""
    plain = tokenizer(CHECK_TEXT, add_special_tokens=False)["input_ids"]
    candidates = [tokenizer.encode(CHECK_TEXT), plain]
    if tokenizer.bos_token_id is not None:
        candidates.insert(1, [tokenizer.bos_token_id] + plain)
    for ids in candidates:
        name = KNOWN_PRE_TOKENIZERS.get(hashlib.sha256(str(ids).encode()).hexdigest())
        if name:
            return name
    raise UserError("the tokenizer's pre-tokenizer (how it splits text before BPE) is not one llama.cpp is known to "
                    f"apply the same way: portaft knows those of {', '.join(sorted(set(KNOWN_PRE_TOKENIZERS.values())))}. "
                    "Exporting it would make llama.cpp tokenize differently from training.")


def write_tokenizer(writer: Any, folder: Path, tokenizer: Any, vocab_size: int, template: str | None) -> TokenizerMeta:
    import gguf

    if (folder / "tokenizer.model").is_file():
        model, pre = "llama", "default"
        tokens, scores, types = _sentencepiece_vocab(folder, tokenizer, vocab_size)
        writer.add_token_scores(scores)
    elif _byte_fallback_bpe(folder):  # a Llama 2 tokenizer saved without its tokenizer.model
        model, pre = "llama", "default"
        entries = list(gguf.LlamaHfVocab(folder).all_tokens())
        tokens, scores, types = [e[0] for e in entries], [e[1] for e in entries], [int(e[2]) for e in entries]
        writer.add_token_scores(scores)
    else:
        model, pre = "gpt2", pre_tokenizer(tokenizer)
        tokens, types = _bpe_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(folder, load_merges=model == "gpt2", n_vocab=len(tokens))
    probe = tokenizer("a")["input_ids"]
    add_bos = adds_bos(tokenizer, template)
    if model == "llama" and _space_prefix_at_start_only(tokenizer, add_bos):
        writer.add_add_space_prefix(False)
    special.add_special_token.update(bos=add_bos, eos=tokenizer.eos_token_id is not None
                                     and probe[-1:] == [tokenizer.eos_token_id])
    for kind in ("bos", "eos", "pad", "unk"):  # the tokenizer the run saved is the authority
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None and token_id < len(tokens):
            special.special_token_ids[kind] = token_id
    eot = _end_of_turn(tokenizer, template)
    if eot is not None:
        special.special_token_ids["eot"] = eot
    special.chat_template = template
    if model == "gpt2" and not special.merges:
        raise UserError(f"{folder}: tokenizer.json holds no BPE merges; cannot write a byte-level BPE vocabulary.")
    special.add_to_gguf(writer, quiet=True)
    return TokenizerMeta(model, pre, len(tokens), add_bos, dict(special.special_token_ids))


def adds_bos(tokenizer: Any, template: str | None) -> bool:
    """Whether llama.cpp should put bos before a prompt. With a chat template: exactly when the
    template begins a conversation with it, as in training (portaft tokenizes the rendered text
    without adding special tokens). Without one: when the tokenizer itself adds it."""
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None:
        return False
    if template is not None:
        from portaft.data.templates import render

        return render(tokenizer, template, [{"role": "user", "content": "hi"}], add_generation_prompt=True).startswith(bos)
    return tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def _bpe_vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id up to the model's vocab_size: normal tokens, added ones (control when special),
    and unused padding rows where the embedding is larger than the vocabulary."""
    import gguf

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special or _looks_special(added[i].content)
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _looks_special(text: str) -> bool:
    """Added tokens some tokenizers forget to mark special (llama.cpp's rule)."""
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))


def _sentencepiece_vocab(folder: Path, tokenizer: Any, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    import gguf

    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise UserError(f"{folder / 'tokenizer.model'}: a SentencePiece tokenizer (Llama 2, InternLM2); reading it "
                        "needs the sentencepiece package: pip install sentencepiece.") from None
    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(folder / "tokenizer.model"))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-1000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for i in range(min(processor.vocab_size(), vocab_size)):
        kind = (gguf.TokenType.UNKNOWN if processor.IsUnknown(i) else gguf.TokenType.CONTROL if processor.IsControl(i)
                else gguf.TokenType.UNUSED if processor.IsUnused(i) else gguf.TokenType.BYTE if processor.IsByte(i)
                else gguf.TokenType.NORMAL)
        piece = processor.IdToPiece(i).encode("utf-8")
        tokens[i], scores[i], types[i] = (piece if piece != b"\x00" else "🐉".encode()), processor.GetScore(i), int(kind)
    for i, token in tokenizer.added_tokens_decoder.items():
        if i < vocab_size:  # as llama.cpp: the tokenizer's added tokens override the model's pieces
            special = token.special or _looks_special(token.content)
            tokens[i] = token.content.encode("utf-8")
            scores[i] = -1000.0
            types[i] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    return tokens, scores, types


def _space_prefix_at_start_only(tokenizer: Any, add_bos: bool) -> bool:
    """Whether llama.cpp must not put "▁" before text: transformers' Metaspace "first" (how it
    loads a Llama tokenizer with legacy off, whatever its tokenizer.json says) puts it only at
    the very start of a text, so a chat rendered from bos on gets none, not after bos nor after
    any other special token. llama.cpp's SentencePiece tokenizer puts one after each special
    token, unless add_space_prefix is off. The loaded tokenizer is read: it is what training used."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return False
    stack = [json.loads(backend.pre_tokenizer.__getstate__())]
    while stack:
        step = stack.pop()
        stack += step.get("pretokenizers") or []
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme", "always")
            return scheme == "never" or (scheme == "first" and add_bos)
    return False


def _byte_fallback_bpe(folder: Path) -> bool:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder}: no tokenizer.json or tokenizer.model: the run's tokenizer is missing.")
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _end_of_turn(tokenizer: Any, template: str | None) -> int | None:
    """The template's end-of-turn token when it is not eos (ChatML's <|im_end|>, Llama 3's <|eot_id|>):
    llama.cpp stops generating at it."""
    if template is None:
        return None
    from portaft.data.templates import stop_token_ids

    extra = [i for i in stop_token_ids(tokenizer, template) if i != tokenizer.eos_token_id]
    return extra[0] if extra else None
