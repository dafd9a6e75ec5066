"""LLaMA-Factory's own formats, written as Jinja."""

# LLaMA-Factory's `default` (hiyouga/LLaMA-Factory src/llamafactory/data/template.py @ ff6d4d12,
# slots unchanged since 128b5b12, 2025-03-17): "System: {sys}<eos>\nHuman: {q}<eos>\nAssistant:{a}<eos>\n".
DEFAULT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Human: ' + message['content'] + eos_token + '\nAssistant:' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\n' }}"
    "{% endif %}{% endfor %}"
)
