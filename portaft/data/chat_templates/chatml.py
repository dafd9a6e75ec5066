"""ChatML and the templates built on it (InternLM2)."""

# ChatML with no default system prompt.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# internlm/internlm2-chat-7b -- tokenizer_config.json "chat_template"
# Copied from: openvinotoolkit/openvino.genai, tests/python_tests/data/tokenizer_configs.py,
#   commit da1db864d2bc1a265e9a036f5b57ef13f0e86c2c, entry "internlm/internlm2-chat-7b"
#   (the "internlm/internlm2-chat-1_8b" entry in that file is identical).
# Corroboration: OptimalScale/LMFlow docs/source/examples/supported_conversation_template.md quotes the same
#   text for internlm2-chat-20b @ HF commit 477d4748322a8a3b28f62b33f0f6dd353cd0b66d.
# CAVEAT: huggingface/huggingface.js packages/jinja/test/e2e.test.js (added 2024-03-05) labels
#   internlm2-chat-7b with a DIFFERENT, probably older template (bos only if the first role is user or system,
#   and eos_token appended after a final assistant turn). The HF repo apparently changed its template over time.
INTERNLM2 = "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
