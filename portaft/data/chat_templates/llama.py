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

# meta-llama/Llama-3.1-8B-Instruct -- tokenizer_config.json "chat_template" (Llama 3.3 70B Instruct has the same).
# Copied from: openvinotoolkit/openvino.genai, tests/python_tests/data/tokenizer_configs.py,
#   commit da1db864d2bc1a265e9a036f5b57ef13f0e86c2c, entry "meta-llama/Llama-3.1-8B-Instruct".
# Cross-checked, identical character for character: ggml-org/llama.cpp
#   models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja (read from the fork ye-NX/llama.cpp @
#   b354d7c9ecb76c97c07098617cdebbdfffa2583e).
# Every conversation starts with a system header holding "Cutting Knowledge Date: December 2023" and
# "Today Date: 26 Jul 2024" (date_string's default), then the system prompt, trimmed. Llama 3.2's template
# differs only in writing the day it renders on (strftime_now) instead of 26 Jul 2024.
LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""
