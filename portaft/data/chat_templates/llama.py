"""Meta Llama chat templates."""

# meta-llama/Llama-2-7b-chat-hf -- tokenizer_config.json "chat_template" (HF ref cited by the sources: L12)
# Copied from: openvinotoolkit/openvino.genai, tests/python_tests/data/tokenizer_configs.py,
#   commit da1db864d2bc1a265e9a036f5b57ef13f0e86c2c, entry "meta-llama/Llama-2-7b-chat-hf"
#   (a dump of HF tokenizer configs; comment there: same for Llama-2-13b/70b-chat-hf).
# Cross-checked, identical character for character:
#   guidance-ai/guidance guidance/chat.py @ 5413339aad8d36ce49df29902a7730d025bd6027, `llama2_template`
#     ("[05/08/24] https://huggingface.co/meta-llama/Llama-2-7b-chat-hf/blob/main/tokenizer_config.json#L12";
#      its tests/need_credentials/test_chat_templates.py asserts tokenizer.chat_template is this exact string)
#   ollama/ollama template/index.json @ fb30760996871fa9460115c753afd2c60d4ab0f7 (entry "llama2-chat", the .strip() one)
# Note: in the JSON the SYS newlines are written "\\n", so the template text contains a
# backslash + "n" inside Jinja string literals (Jinja turns that into a newline when rendering).
LLAMA2 = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"

# meta-llama/Meta-Llama-3-8B-Instruct -- tokenizer_config.json "chat_template" (HF ref: L2053)
# Copied from (an actual tokenizer_config.json, decoded with json.loads):
#   YJiangcm/WebR, Meta-Llama-3-8B-Instruct/tokenizer_config.json,
#   commit fb2f249a5547f6be5001f8191451ac1b7877e57c
# Cross-checked, identical:
#   guidance-ai/guidance guidance/chat.py @ 5413339aad8d36ce49df29902a7730d025bd6027, `llama3_template`
#     ("[05/08/24] https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct/blob/main/tokenizer_config.json#L2053")
#   openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @ da1db864d2bc1a265e9a036f5b57ef13f0e86c2c
#   ollama/ollama template/index.json @ fb30760996871fa9460115c753afd2c60d4ab0f7 (first "llama3-instruct" entry)
# This is the current version, with `{% if add_generation_prompt %}`; the April 2024 original
# always appended the assistant header (no add_generation_prompt check).
LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
