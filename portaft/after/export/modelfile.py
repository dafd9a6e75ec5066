"""The Ollama Modelfile written next to the GGUF.

Ollama renders conversations with Go templates, not Jinja, so each of portaft's built-in
chat templates has its Go twin below, written to give the same text for the same
conversation (tests/unit/test_export_modelfile.py renders both and compares). Ollama
passes `.Messages` (the system prompt first when there is one, as the Modelfile's SYSTEM
or the request's) and `.System` (the system text); a chat request always ends with the
user's turn, after which the template writes the generation prompt.

Where the template writes the bos token as text, llama.cpp would add a second one when
the tokenizer adds bos itself: then the Go template leaves the leading one to llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

from portaft.data import chat_templates
from portaft.errors import UserError

BOS, TURN_BOS, EOS = "@BOS@", "@TURN_BOS@", "@EOS@"  # filled in with the tokenizer's texts
CHATML_TURNS = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
GO_TEMPLATES = {
    "deepseek": (BOS + '{{ range .Messages }}{{ if eq .Role "user" }}User: {{ .Content }}\n\n'
                 '{{ else if eq .Role "assistant" }}Assistant: {{ .Content }}' + EOS +
                 '{{ else if eq .Role "system" }}{{ .Content }}\n\n{{ end }}{{ end }}Assistant:'),
    "llama2": ('{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}'
               '{{ if eq $i 0 }}' + BOS + '{{ else if and (eq $i 1) $.System }}' + BOS + '{{ else }}' + TURN_BOS +
               '{{ end }}[INST] {{ if and (eq $i 1) $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}'
               '{{ .Content }} [/INST]{{ else if eq .Role "assistant" }} {{ .Content }} ' + EOS + '{{ end }}{{ end }}'),
    "llama3": (BOS + '{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n'),
    "qwen": ('{{ if not $.System }}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful '
             'assistant.<|im_end|>\n{{ end }}' + CHATML_TURNS),
    "qwen2": '{{ if not $.System }}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{{ end }}' + CHATML_TURNS,
    "chatml": CHATML_TURNS,
    # Qwen3: a chat request ends with the user's turn, so every earlier reply is history, which
    # its template writes without a think block; thinking off opens and closes an empty one
    "qwen3": CHATML_TURNS,
    "qwen3_nothink": CHATML_TURNS + "<think>\n\n</think>\n\n",
    "internlm2": BOS + CHATML_TURNS,
    "default": ('{{ range .Messages }}{{ if eq .Role "system" }}System: {{ .Content }}' + EOS + '\n'
                '{{ else if eq .Role "user" }}Human: {{ .Content }}' + EOS + '\nAssistant:'
                '{{ else if eq .Role "assistant" }}{{ .Content }}' + EOS + '\n{{ end }}{{ end }}'),
    # Mistral v0.3 writes the system prompt into the last user message only (the one a chat
    # request ends with): Go templates have no arithmetic, so "last" is one message left to slice
    "mistral": (BOS + '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}[INST] '
                '{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]'
                '{{ else if eq .Role "assistant" }} {{ .Content }}' + EOS + '{{ end }}{{ end }}'),
    # Gemma: the system prompt opens the first user message (right after the system message); replies are "model"
    "gemma": (BOS + '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n'
              '{{ if and $.System (eq $i 1) }}{{ $.System }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n'
              '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}'
              '<start_of_turn>model\n'),
    # Llama 3.1: a system header always, with the template's knowledge date and its default today's date
    "llama3.1": (BOS + '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n'
                 'Today Date: 26 Jul 2024\n\n{{ $.System }}<|eot_id|>{{ range .Messages }}{{ if ne .Role "system" }}'
                 '<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{ end }}'
                 '<|start_header_id|>assistant<|end_header_id|>\n\n'),
}
# Built-in templates without a Go twin (none today): their Modelfile leaves TEMPLATE to Ollama,
# which derives it from the GGUF's chat template. A new built-in template goes here, with the
# reason, until it has its twin (tests/unit/test_export_modelfile.py holds every one to this).
WITHOUT_GO_TWIN: dict[str, str] = {}
# portaft's `eval_prompts` and `portaft chat` answer greedily; Ollama's default samples at 0.8
SAMPLING = {"temperature": 0}


@dataclass
class Modelfile:
    text: str
    template_name: str | None  # the built-in template the TEMPLATE renders; None: Ollama reads the GGUF's


def built_in_name(template: str | None) -> str | None:
    """The built-in template's name when the run trained with one (compared by its text)."""
    return next((name for name, source in chat_templates.BUILT_IN.items() if source == template), None)


def go_template(name: str, bos: str, eos: str, add_bos: bool) -> str:
    text = GO_TEMPLATES[name]
    return text.replace(BOS, "" if add_bos else bos).replace(TURN_BOS, bos).replace(EOS, eos)


def stop_texts(ending: str, eos: str | None) -> list[str]:
    """What ends a reply: the template's end-of-turn text and eos."""
    stops = [s for s in (ending.strip(), eos) if s]
    return list(dict.fromkeys(stops))


def modelfile(gguf_name: str, template: str | None, system: str | None, ending: str, bos: str | None,
              eos: str | None, add_bos: bool, source: str) -> Modelfile:
    name = built_in_name(template)
    if name in WITHOUT_GO_TWIN:
        name = None
    lines = [f"# Written by `portaft export` from {source}.",
             f"# ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}"]
    if name is not None:
        lines.append(f'TEMPLATE """{_quoted(go_template(name, bos or "", eos or "", add_bos), "TEMPLATE")}"""')
    else:
        lines.append("# The chat template is not one of portaft's built-in ones: Ollama derives TEMPLATE from the "
                     "GGUF's tokenizer.chat_template. Check `ollama show --template NAME`.")
    if system:
        lines.append(f'SYSTEM """{_quoted(system, "the recipe system prompt")}"""')
    lines += [f"PARAMETER stop {_go_string(stop)}" for stop in stop_texts(ending, eos)]
    lines.append("# greedy, as portaft's eval_prompts and `portaft chat` answer")
    lines += [f"PARAMETER {key} {value}" for key, value in SAMPLING.items()]
    return Modelfile("\n".join(lines) + "\n", name)


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise UserError(f'{what} contains """, which an Ollama Modelfile cannot quote.')
    return text


def _go_string(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)
