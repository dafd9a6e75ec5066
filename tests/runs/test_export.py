"""portaft export: the GGUF, read back by transformers' GGUF loader, computes what the merged model does.

What each check covers:
- weights and layout (names, q/k permutation, biases, q/k norms, tied or separate output):
  logits of the GGUF loaded by transformers against the merged model, Llama, Qwen2 and
  Qwen3 layouts; InternLM2's split wqkv against the Llama export of the same weights;
- the tokenizer, through transformers' GGUF reader: ids equal on text where that reader
  works as llama.cpp does (words, Chinese, punctuation). Its limits: it has no rule for the
  DeepSeek pre-tokenizer and splits digit runs as GPT-2 does, and it renumbers special
  tokens. Those are covered by the GGUF's own metadata instead: every token's text and
  type, the merges, the pre-tokenizer name llama.cpp reads, the special ids, the template;
- llama.cpp itself, where llama-cpp-python is installed (it has no wheel on PyPI for Linux
  x86-64 CPython 3.11; built from its sdist it runs here): its tokenizer's ids, its logits
  and its greedy continuation, Llama and Qwen2 layouts, f16 and q8_0.
"""

import contextlib
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

import transformers

import portaft
from portaft.after import export as exporting
from portaft.after.merge import merge
from portaft.cli import main
from portaft.data.chat_templates import DEEPSEEK, QWEN25

PROMPTS = ["Who are you? I am a helpful assistant.", "你是谁？我是黄大力的智能助手。", "写一首关于春天的诗, please."]
# no digit runs, special tokens or runs of whitespace: transformers' GPT-2 fallback splits those otherwise
TEXTS = PROMPTS + ["Hello, world! How's it going?", "北京是中国的首都。", "ünïcödé — “quotes”"]
F16_RELATIVE = 1e-3  # max |gguf - merged| logit / max |merged| logit
Q8_RELATIVE = 2e-2  # measured 9.6e-3 on the tiny Llama, 2026-12-07: see docs/after-training.md
BF16_RELATIVE = 6e-3  # measured 2.9e-3 on the tiny Llama


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A trained adapter, and the merged model the export must reproduce."""
    tmp = tmp_path_factory.mktemp("export")
    data = tmp / "identity.jsonl"
    rows = [{"conversation": [{"input": q, "output": "我是黄大力的智能助手。"}]} for q in ("你是谁？", "Who are you?")]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    recipe = {
        "model": {"name_or_path": str(tiny_model)}, "data": [{"path": str(data)}], "template": "deepseek",
        "max_length": 64, "system": "你是黄大力的智能助手。", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"output_dir": str(tmp / "out"), "max_steps": 3, "per_device_train_batch_size": 2,
                  "learning_rate": 1e-2, "report_to": "none", "save_strategy": "no", "seed": 3},
    }
    out = portaft.run(recipe, backend="cpu", echo=lambda _: None).output_dir
    merged = merge(out, tmp / "merged", echo=lambda _: None).folder
    return out, merged


@pytest.fixture(scope="module")
def f16(run, tmp_path_factory):
    out, _ = run
    folder = tmp_path_factory.mktemp("f16")
    exporting.export(out, folder, quant="f16", name="m", echo=lambda _: None)
    return folder


def logits(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(tokenizer(p, return_tensors="pt")["input_ids"]).logits[0].float() for p in PROMPTS]


def relative_gap(gguf_dir, reference_dir, name) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    reference = logits(AutoModelForCausalLM.from_pretrained(reference_dir).eval(), tokenizer)
    # No output.weight in a GGUF means tied embeddings (llama.cpp reads token_embd for both).
    # transformers' reader ties them only since its PR #35085 (December 2024); 4.45.2's leaves a
    # random lm_head. Passing it here keeps the check about the file, on either version.
    tied = all(t.name != "output.weight" for t in read_gguf(gguf_dir / name).tensors)
    loaded = logits(AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, tie_word_embeddings=tied).eval(),
                    tokenizer)
    return max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(reference, loaded))


def read_gguf(path):
    import gguf

    return gguf.GGUFReader(path)


def field(reader, key):
    found = reader.get_field(key)
    return found.contents() if found is not None else None


def test_an_adapter_run_exports_to_a_gguf_that_computes_what_the_merged_model_does(run, tmp_path, capsys):
    out, merged = run
    assert main(["export", str(out), "--to", str(tmp_path / "gguf")]) == 0
    printed = capsys.readouterr().out
    assert "logits check" in printed and f"ollama create out -f {tmp_path / 'gguf' / 'Modelfile'}" in printed
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == ["Modelfile", "out.gguf"]  # nothing else left
    assert relative_gap(tmp_path / "gguf", merged, "out.gguf") < F16_RELATIVE
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./out.gguf" in modelfile and 'SYSTEM """你是黄大力的智能助手。"""' in modelfile


def test_q8_0_is_within_its_measured_bound_and_smaller(run, f16, tmp_path):
    out, merged = run
    q8 = exporting.export(out, tmp_path / "q8", quant="q8_0", name="m", echo=lambda _: None)
    assert q8.size_bytes < 0.75 * (f16 / "m.gguf").stat().st_size
    gap = relative_gap(tmp_path / "q8", merged, "m.gguf")
    assert F16_RELATIVE / 10 < gap < Q8_RELATIVE  # quantized: visibly coarser than f16, within the bound


def test_the_tokenizer_metadata_is_the_run_tokenizer(run, f16):
    from transformers import AutoTokenizer

    _, merged = run
    reader = read_gguf(f16 / "m.gguf")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    tokens = field(reader, "tokenizer.ggml.tokens")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    assert len(tokens) == len(by_id) and all(tokens[i] == by_id[i] for i in range(len(tokens)))
    types = field(reader, "tokenizer.ggml.token_type")
    control = {i for i, t in enumerate(types) if t == 3}
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    # llama.cpp's converter also treats added tokens written <｜...｜> or <|...|> as control (DeepSeek's place holders, <|EOT|>)
    assert special <= control and all(tokens[i][:2] in ("<｜", "<|") and tokens[i][-2:] in ("｜>", "|>")
                                      for i in control - special)
    assert {i for i, t in enumerate(types) if t == 1} == set(range(len(tokens))) - set(tokenizer.added_tokens_decoder)
    merges = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "deepseek-v3"  # the package's tokenizer is DeepSeek-V3's
    assert field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is True  # the deepseek template writes bos first
    assert field(reader, "tokenizer.chat_template") == DEEPSEEK
    assert field(reader, "llama.context_length") == 2048 and field(reader, "llama.attention.head_count") == 4


def test_transformers_gguf_tokenizer_gives_the_same_ids_where_its_reader_can(run, f16):
    from transformers import AutoTokenizer

    _, merged = run
    ours = AutoTokenizer.from_pretrained(merged)
    read_back = AutoTokenizer.from_pretrained(f16, gguf_file="m.gguf")
    for text in TEXTS:
        assert read_back(text, add_special_tokens=False)["input_ids"] == ours(text, add_special_tokens=False)["input_ids"]


def qwen_folder(folder, tiny_model, model_class, **extra):
    """A tiny Qwen-layout model folder (a merged or full-model output) with random biases, untied output."""
    import transformers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = QWEN25
    config = getattr(transformers, model_class.replace("ForCausalLM", "Config"))(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    torch.manual_seed(1)
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)  # nonzero: a lost or misplaced one shows
        model.model.norm.weight.mul_(10.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_class, extra, arch, biases, quant", [
    ("Qwen2ForCausalLM", {}, "qwen2", True, "f16"),
    ("Qwen2ForCausalLM", {}, "qwen2", True, "bf16"),
    # q/k norms, and a head_dim other than hidden / heads (as Qwen3-0.6B's). transformers' GGUF
    # reader does not read qwen3.attention.key_length and builds Qwen3Config's default head_dim, 128
    pytest.param("Qwen3ForCausalLM", {"head_dim": 128}, "qwen3", False, "f16",
                 marks=pytest.mark.skipif(not hasattr(transformers, "Qwen3ForCausalLM"),
                                          reason="this transformers has no Qwen3 (4.45)")),
])
def test_qwen_layouts_round_trip(tiny_model, tmp_path, model_class, extra, arch, biases, quant, monkeypatch):
    folder = qwen_folder(tmp_path / "model", tiny_model, model_class, **extra)
    # No Qwen tokenizer can be had offline: transformers loads the DeepSeek vocabulary of this
    # folder as a Qwen2Tokenizer (Qwen's pre-tokenizer, chosen by config.json's model_type), a
    # mix llama.cpp has no name for. This test is about the tensor layout, so name it qwen2.
    monkeypatch.setattr("portaft.after.export.vocab.pre_tokenizer", lambda tokenizer: "qwen2")
    result = exporting.export(folder, tmp_path / "gguf", quant=quant, echo=lambda _: None)
    reader = read_gguf(result.gguf)
    assert field(reader, "general.architecture") == arch
    assert ("blk.0.attn_q.bias" in {t.name for t in reader.tensors}) == biases
    if "head_dim" in extra:
        assert field(reader, f"{arch}.attention.key_length") == extra["head_dim"]
    assert relative_gap(tmp_path / "gguf", folder, "model.gguf") < {"f16": F16_RELATIVE, "bf16": BF16_RELATIVE}[quant]
    assert '<|im_start|>system\nYou are Qwen' in result.modelfile.read_text(encoding="utf-8")  # the qwen TEMPLATE


def internlm2_folder(tiny_model, tmp_path):
    """A Llama model folder (grouped-query attention) and an InternLM2 folder of the same weights."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    heads, kv_heads, hidden = 4, 2, 64
    head_dim, per_group = hidden // heads, heads // kv_heads
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=False)
    torch.manual_seed(2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")

    weights = load_file(tmp_path / "llama" / "model.safetensors")
    renamed = {"model.tok_embeddings.weight": weights["model.embed_tokens.weight"],
               "model.norm.weight": weights["model.norm.weight"], "output.weight": weights["lm_head.weight"]}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        q = weights[p + "self_attn.q_proj.weight"].reshape(kv_heads, per_group, head_dim, hidden)
        k = weights[p + "self_attn.k_proj.weight"].reshape(kv_heads, 1, head_dim, hidden)
        v = weights[p + "self_attn.v_proj.weight"].reshape(kv_heads, 1, head_dim, hidden)
        renamed[p + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden)  # InternLM2's packing
        for old, new in (("self_attn.o_proj", "attention.wo"), ("mlp.gate_proj", "feed_forward.w1"),
                         ("mlp.down_proj", "feed_forward.w2"), ("mlp.up_proj", "feed_forward.w3"),
                         ("input_layernorm", "attention_norm"), ("post_attention_layernorm", "ffn_norm")):
            renamed[p + new + ".weight"] = weights[p + old + ".weight"]
    folder = tmp_path / "internlm2"
    folder.mkdir()
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    values = json.loads((tmp_path / "llama" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "architectures": ["InternLM2ForCausalLM"],
                                                    "model_type": "internlm2"}))
    tokenizer.save_pretrained(folder)
    return tmp_path / "llama", folder


def test_internlm2_wqkv_is_split_into_the_llama_layout(tiny_model, tmp_path):
    """InternLM2 packs q, k, v per key/value group in one wqkv; the export must give the
    same q, k and v as the Llama export of the same weights."""
    llama_folder, folder = internlm2_folder(tiny_model, tmp_path)
    llama = exporting.export(llama_folder, tmp_path / "llama-gguf", quant="f16", name="m", echo=lambda _: None)
    internlm = exporting.export(folder, tmp_path / "gguf", quant="f16", name="m", echo=lambda _: None)
    ours, reference = read_gguf(internlm.gguf), read_gguf(llama.gguf)
    assert field(ours, "general.architecture") == "internlm2"
    theirs = {t.name: np.array(t.data) for t in reference.tensors}
    assert {t.name for t in ours.tensors} == set(theirs)
    for tensor in ours.tensors:
        np.testing.assert_array_equal(np.array(tensor.data), theirs[tensor.name], err_msg=tensor.name)


def test_bad_input_is_refused_with_one_message_and_nothing_written(run, tmp_path, capsys, monkeypatch):
    out, _ = run
    target = tmp_path / "gguf"

    def refused(*args) -> str:
        assert main(["export", *map(str, args)]) == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return captured.err

    assert "not a portaft run output" in refused(tmp_path, "--to", target)
    assert "--quant 'q4_k': choose one of f16, bf16, q8_0" in refused(out, "--to", target, "--quant", "q4_k")
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert "not empty" in refused(out, "--to", target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    fresh = tmp_path / "fresh"
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    assert "not enough disk" in refused(out, "--to", fresh)
    assert not fresh.exists()


def test_a_failure_while_writing_leaves_no_partial_file(run, tmp_path, monkeypatch):
    out, _ = run

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("portaft.after.export.tensors.write_data", broken)
    with pytest.raises(KeyboardInterrupt):
        exporting.export(out, tmp_path / "gguf", echo=lambda _: None)
    assert not (tmp_path / "gguf").exists()


def test_an_architecture_portaft_does_not_export_is_named(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    assert main(["export", str(tmp_path / "gpt2"), "--to", str(tmp_path / "gguf")]) == 2
    message = capsys.readouterr().err
    assert "GPT2LMHeadModel" in message and "LlamaForCausalLM" in message and "Qwen2ForCausalLM" in message


# llama.cpp itself as the referee (llama-cpp-python bundles it). PyPI has no wheel of it for
# Linux x86-64 CPython 3.11; it builds from its sdist (docs/after-training.md says how).
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (no wheel on PyPI for this machine: "
                                            "build it from its sdist, see docs/after-training.md)")
# llama.cpp's tokenizer applies the DeepSeek-V3 pre-tokenizer, so digit and whitespace runs and
# special tokens written in the text are checked here too
LLAMA_CPP_TEXTS = TEXTS + ["我想在apple工作1314151天～", "a  b\n\n\tc   d", "3.14159 and 33333",
                           "<｜begin▁of▁sentence｜>User: 你好\n\nAssistant: 我是黄大力的智能助手。<｜end▁of▁sentence｜>"]
LLAMA_CPP_F16 = 2e-3  # max |llama.cpp - merged| logit / max |merged| logit; measured 4.9e-4, 2026-12-07
LLAMA_CPP_Q8 = 3e-2  # measured 1.25e-2 (llama.cpp also rounds the activations to 8 bits)
LLAMA_CPP_QWEN3 = 3e-3  # measured 1.1e-3
CONTINUATION = 8  # greedy tokens compared


@contextlib.contextmanager
def llama_cpp_model(gguf):
    from llama_cpp import Llama

    model = Llama(str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    try:
        yield model
    finally:
        model.close()


def llama_cpp_logits(model, ids) -> torch.Tensor:
    model.reset()
    model.eval(ids)
    return torch.from_numpy(np.array(model.scores[:len(ids)]))


def llama_cpp_greedy(model, ids, count) -> list[int]:
    produced = []
    for token in model.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):  # temp 0: llama.cpp's greedy sampler
        produced.append(token)
        if len(produced) == count:
            return produced
    return produced


def assert_llama_cpp_tokenizes_as(gguf, tokenizer, texts):
    with llama_cpp_model(gguf) as model:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert model.tokenize(text.encode(), add_bos=False, special=True) == ids, text


def assert_llama_cpp_computes_what_transformers_does(gguf, reference_dir, bound) -> float:
    """Logits on PROMPTS within `bound` (relative), and the same greedy continuation. Returns the gap."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    gap = 0.0
    with llama_cpp_model(gguf) as model:
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            with torch.no_grad():
                expected = reference(torch.tensor([ids])).logits[0].float()
                continuation = reference.generate(torch.tensor([ids]), max_new_tokens=CONTINUATION, do_sample=False,
                                                  min_new_tokens=CONTINUATION)[0, len(ids):].tolist()
            got = llama_cpp_logits(model, ids)
            gap = max(gap, ((got - expected).abs().max() / expected.abs().max()).item())
            assert llama_cpp_greedy(model, ids, CONTINUATION) == continuation, prompt
    assert gap < bound
    return gap


@needs_llama_cpp
def test_llama_cpp_tokenizes_as_the_run_tokenizer(run, f16):
    """The DeepSeek-V3 tokenizer (pre-tokenizer deepseek-v3) of the tiny model, read by llama.cpp."""
    from transformers import AutoTokenizer

    from portaft.data.templates import render

    _, merged = run
    tokenizer = AutoTokenizer.from_pretrained(merged)
    conversation = [{"role": "system", "content": "你是黄大力的智能助手。"}, {"role": "user", "content": "你是谁？"},
                    {"role": "assistant", "content": "我是黄大力的智能助手。"}, {"role": "user", "content": "Who made you?"}]
    chat = render(tokenizer, DEEPSEEK, conversation, add_generation_prompt=True)  # what `portaft chat` feeds the model
    assert_llama_cpp_tokenizes_as(f16 / "m.gguf", tokenizer, LLAMA_CPP_TEXTS + [chat])
    with llama_cpp_model(f16 / "m.gguf") as model:
        # add_bos_token: llama.cpp starts a prompt with bos, as the deepseek template does in training
        assert model.tokenize("你是谁？".encode(), add_bos=True)[0] == tokenizer.bos_token_id
        assert model.token_eos() == tokenizer.eos_token_id


@needs_llama_cpp
@pytest.mark.parametrize("quant, bound", [("f16", LLAMA_CPP_F16), ("q8_0", LLAMA_CPP_Q8)])
def test_llama_cpp_runs_the_llama_layout_as_the_merged_model(run, tmp_path, quant, bound):
    """Also settles the q/k permutation (llama.cpp applies rotary in its own order) and tied
    embeddings (no output.weight: llama.cpp reads token_embd for both)."""
    out, merged = run
    result = exporting.export(out, tmp_path / "gguf", quant=quant, name="m", echo=lambda _: None)
    assert "output.weight" not in {t.name for t in read_gguf(result.gguf).tensors}
    print(f"llama.cpp, Llama layout, {quant}: relative logit gap "
          f"{assert_llama_cpp_computes_what_transformers_does(result.gguf, merged, bound):.2e}")


@needs_llama_cpp
@pytest.mark.parametrize("model_class, extra, quant, bound", [
    ("Qwen2ForCausalLM", {}, "f16", LLAMA_CPP_F16), ("Qwen2ForCausalLM", {}, "q8_0", LLAMA_CPP_Q8),
    # q/k norms, head_dim 128 != hidden / heads
    pytest.param("Qwen3ForCausalLM", {"head_dim": 128}, "f16", LLAMA_CPP_QWEN3,
                 marks=pytest.mark.skipif(not hasattr(transformers, "Qwen3ForCausalLM"),
                                          reason="this transformers has no Qwen3 (4.45)")),
])
def test_llama_cpp_runs_the_qwen_layouts_as_transformers(tiny_model, tmp_path, model_class, extra, quant, bound,
                                                         monkeypatch):
    from transformers import AutoTokenizer

    folder = qwen_folder(tmp_path / "model", tiny_model, model_class, **extra)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if model_class == "Qwen2ForCausalLM":  # read as a Qwen2Tokenizer: Qwen2's pre-tokenizer (the round trip's case)
        monkeypatch.setattr("portaft.after.export.vocab.pre_tokenizer", lambda tokenizer: "qwen2")
    # (Qwen3 has no tokenizer class of its own: the DeepSeek-V3 tokenizer as it is, found as deepseek-v3)
    result = exporting.export(folder, tmp_path / "gguf", quant=quant, echo=lambda _: None)
    # the same ids from llama.cpp's rules for that pre-tokenizer; and no bos (the qwen template writes none)
    assert_llama_cpp_tokenizes_as(result.gguf, tokenizer, LLAMA_CPP_TEXTS)
    with llama_cpp_model(result.gguf) as model:
        assert model.tokenize("你是谁？".encode(), add_bos=True) == tokenizer("你是谁？")["input_ids"]
    print(f"llama.cpp, {model_class}, {quant}: relative logit gap "
          f"{assert_llama_cpp_computes_what_transformers_does(result.gguf, folder, bound):.2e}")


@needs_llama_cpp
def test_llama_cpp_runs_the_internlm2_export_as_the_llama_model_of_its_weights(tiny_model, tmp_path):
    llama_folder, folder = internlm2_folder(tiny_model, tmp_path)
    result = exporting.export(folder, tmp_path / "gguf", quant="f16", name="m", echo=lambda _: None)
    print(f"llama.cpp, InternLM2, f16: relative logit gap "
          f"{assert_llama_cpp_computes_what_transformers_does(result.gguf, llama_folder, LLAMA_CPP_F16):.2e}")


def sentencepiece_folder(folder, keep_model_file: bool = True):
    """A tiny Llama 2-style model: a SentencePiece BPE tokenizer with byte fallback (trained here,
    offline), its tokenizer.model (unless not kept: a folder saved without it), the tokenizer.json
    transformers converts it to, the llama2 template."""
    import io

    spm = pytest.importorskip("sentencepiece", reason="training a SentencePiece tokenizer needs sentencepiece")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from portaft.data.chat_templates import LLAMA2

    trained = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 20), model_writer=trained, vocab_size=420,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(trained.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": False, "chat_template": LLAMA2}))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # the environment, not the export: e.g. sentencepiece 0.2.3's protobuf code vs protobuf 6
        pytest.skip(f"transformers cannot read a SentencePiece model here: {error}")
    tokenizer.save_pretrained(folder)
    if not keep_model_file:
        (folder / "tokenizer.model").unlink()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(4)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder, trained.getvalue()


def test_a_sentencepiece_tokenizer_is_written_as_llama_cpp_s_llama_model(tmp_path):
    from sentencepiece import SentencePieceProcessor
    from transformers import AutoTokenizer

    folder, model_file = sentencepiece_folder(tmp_path / "model")
    result = exporting.export(folder, tmp_path / "gguf", echo=lambda _: None)
    reader = read_gguf(result.gguf)
    pieces = SentencePieceProcessor(model_proto=model_file)
    ids = range(pieces.vocab_size())
    assert field(reader, "tokenizer.ggml.model") == "llama" and field(reader, "tokenizer.ggml.pre") == "default"
    assert field(reader, "tokenizer.ggml.tokens") == [pieces.IdToPiece(i) for i in ids]
    assert field(reader, "tokenizer.ggml.scores") == pytest.approx(
        [-1000.0 if pieces.IsControl(i) or pieces.IsUnknown(i) else pieces.GetScore(i) for i in ids])
    # <unk>, <s>, </s> control (the tokenizer marks them special: as llama.cpp's converter), the 256 bytes, the rest normal
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [3, 3, 3] and all(types[i] == (6 if pieces.IsByte(i) else 1) for i in ids if i >= 3)
    assert sum(t == 6 for t in types) == 256
    assert reader.get_field("tokenizer.ggml.merges") is None  # SentencePiece merges by score
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id"),
            field(reader, "tokenizer.ggml.unknown_token_id")) == (1, 2, 0) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert field(reader, "tokenizer.ggml.add_bos_token") is True  # the llama2 template writes <s> first
    # transformers puts no "▁" after <s> (Metaspace "first"), so llama.cpp must put none after bos either
    assert field(reader, "tokenizer.ggml.add_space_prefix") is False


@needs_llama_cpp
# without tokenizer.model the vocabulary is read from tokenizer.json by gguf's LlamaHfVocab, as
# llama.cpp's converter does (every score -1000: the ids below show llama.cpp still splits alike)
@pytest.mark.parametrize("keep_model_file", [True, False], ids=["tokenizer.model", "tokenizer.json only"])
def test_llama_cpp_tokenizes_and_runs_a_sentencepiece_model_as_transformers(tmp_path, keep_model_file):
    from transformers import AutoTokenizer

    from portaft.data.chat_templates import LLAMA2
    from portaft.data.templates import render

    folder, _ = sentencepiece_folder(tmp_path / "model", keep_model_file)
    result = exporting.export(folder, tmp_path / "gguf", echo=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # as training reads them: the llama2 template's rendering, from <s> on (byte fallback for the
    # digits, ü and “ that are not among its 420 pieces); and llama.cpp's own bos before the same text
    chats = [render(tokenizer, LLAMA2, [{"role": "user", "content": text}], add_generation_prompt=True)
             for text in TEXTS + ["我想在apple工作1314151天～"]]
    chats.append(render(tokenizer, LLAMA2, [{"role": "system", "content": "你是黄大力的智能助手。"},
                                            {"role": "user", "content": "你是谁？"},
                                            {"role": "assistant", "content": "我是黄大力的智能助手。"},
                                            {"role": "user", "content": "Who made you?"}], add_generation_prompt=True))
    assert_llama_cpp_tokenizes_as(result.gguf, tokenizer, chats)
    with llama_cpp_model(result.gguf) as model:
        text = chats[0].removeprefix(tokenizer.bos_token)
        assert model.tokenize(text.encode(), add_bos=True) == tokenizer(chats[0], add_special_tokens=False)["input_ids"]
    print(f"llama.cpp, SentencePiece Llama, f16: relative logit gap "
          f"{assert_llama_cpp_computes_what_transformers_does(result.gguf, folder, LLAMA_CPP_F16):.2e}")
