"""Gemma chat templates (Gemma 2 and Gemma 3 instruct)."""

# google/gemma-3-1b-it -- tokenizer_config.json "chat_template" (the same text in every Gemma 3 instruct model
# whose template reads string content; the multimodal ones add image items, which this one also reads).
# Copied from: openvinotoolkit/openvino.genai, tests/python_tests/data/tokenizer_configs.py,
#   commit da1db864d2bc1a265e9a036f5b57ef13f0e86c2c, entry "google/gemma-3-1b-it".
# Cross-checked, identical character for character: ShishirPatil/gorilla,
#   berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/gemma.py @ 72055c51cf809ba0ee04b4332a3515d7ec8549a5
#   (a docstring quoting the tokenizer_config.json). The "\n\n" after the system prompt is a real newline in
#   the template source (as in the JSON), not a Jinja escape.
# A system prompt is put in front of the first user message ("<sys>\n\n<user>"); Gemma 2's own template
# (google/gemma-2-2b-it) refuses a system message and otherwise renders the same text, which the tests check.
GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""
