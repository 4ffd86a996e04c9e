"""Write the fixtures and goldens that `swift test` (swift/Tests/MLXEdgeTests) compares against.

Every golden comes from an independent Python implementation: token ids from Hugging Face
`tokenizers`, chat renderings from jinja2 the way transformers renders templates, logits from
mlx-lm. Small files go to swift/Tests/MLXEdgeTests/Fixtures (committed), the tiny bundles to
tests/goldens/tiny (committed, also read by pytest's tests/test_tiny_goldens.py); real-model
bundles go to swift/Generated (ignored; the real-model tests skip when it is absent).

    .venv/bin/python scripts/make_swift_fixtures.py [--only tokenizers,templates,sampling,tiny,real]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from a checkout; tests/ for tiny_models
FIXTURES = ROOT / "swift" / "Tests" / "MLXEdgeTests" / "Fixtures"
TINY_DIR = ROOT / "tests" / "goldens" / "tiny"
GENERATED = ROOT / "swift" / "Generated"
SITE = Path(json.__file__).parent  # stdlib; site-packages is found below
TRAIN_TEXTS = ("pydantic-*.dist-info/METADATA", "tqdm-*.dist-info/METADATA")

# Strings that break naive tokenizers: whitespace runs, CRLF, unicode, emoji, CJK, digits,
# special tokens written in text.
HARD_STRINGS = [
    "Hello world",
    "",
    " ",
    "a",
    "  leading spaces",
    "trailing spaces   ",
    "multiple     spaces    between   words",
    "tabs\tand\t\ttabs",
    "CRLF line\r\nnext line\r\n",
    "a\r\nb\r\n\r\nc \r\n d",
    "x\u0301 \u2581\u0301 e\u0301e",
    "\n\n\nnewlines\n",
    "unicode: café naïve résumé façade Ünïcödé",
    "combining e\u0301 and precomposed \u00e9",
    "emoji: 😀👍🏽👨‍👩‍👧 🇫🇷 ❤️",
    "CJK: 日本語のテキスト 中文字符 한국어",
    "Русский текст, Ελληνικά, עברית, العربية, नमस्ते",
    "digits 1234567890 3.14159 1,000,000 2024-01-31",
    "It's we're they'll I'd CAPS'S don'T",
    "zero\u200bwidth and non-breaking\u00a0space, vertical\u000btab, next\u0085line",
    "math ∑∫√∞≠≤ and arrows →⇒↔",
    "def f(x):\n    return x ** 2  # comment\n\n\tpass",
    "https://example.com/path?q=1&r=two#frag",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<s>bos inside</s> and <unk>",
    "<start_of_turn>user\nhello<end_of_turn>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "a<|im_end|>b <|im_end|> c",
    "ends with special<|endoftext|>",
    "~!@#$%^&*()_+`-=[]{}|;':\",./<>?",
]


def site_packages() -> Path:
    import numpy

    return Path(numpy.__file__).resolve().parents[1]


def training_text() -> str:
    sp = site_packages()
    parts = []
    for pattern in TRAIN_TEXTS:
        for p in sorted(sp.glob(pattern)):
            parts.append(p.read_text(encoding="utf-8", errors="replace"))
    # A few lines in other scripts so the vocab is not pure ASCII.
    parts.append("café naïve résumé Ünïcödé 日本語 中文 한국어 Русский Ελληνικά 😀 " * 20)
    return "\n".join(parts)


# -- tokenizers ----------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(pre_tokenizer, specials, vocab_size=1200, post=None, normalizer=None, ignore_merges=False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text().splitlines(), trainer)
    if post is not None:
        tok.post_processor = post
    return tok


def _sentencepiece_style(metaspace: bool):
    """Llama 2 / Gemma style: ▁ for spaces, byte fallback for characters outside the vocab."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=80, show_progress=False)
    tok.train_from_iterator(training_text().splitlines(), trainer)
    # Rebuild with byte tokens <0x00>..<0xFF> after the specials, as SentencePiece vocabularies have.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    order = sorted(vocab, key=vocab.get)
    new = {t: i for i, t in enumerate(order[:3])}
    for b in range(256):
        new[f"<0x{b:02X}>"] = len(new)
    for t in order[3:]:
        new.setdefault(t, len(new))
    spec["model"].update(vocab=new, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    for a in spec["added_tokens"]:
        a["id"] = new[a["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    if metaspace:  # newer Gemma-like files: Metaspace pre-tokenizer and decoder
        tok.normalizer = None
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:  # Llama 2 tokenizer.json: normalizer Prepend+Replace, no pre-tokenizer
        tok.pre_tokenizer = None
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def make_tokenizers(out: Path) -> list[str]:
    from tokenizers import Regex, normalizers, pre_tokenizers, processors

    from tokenizers import AddedToken

    made = {
        "gpt2_bytelevel": _byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), SPECIALS),
        "smollm2_style": _byte_level(pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]), SPECIALS),
        "llama3_style": _byte_level(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
            ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            post=processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
                single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])]),
            ignore_merges=True),
        "qwen2_style": _byte_level(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), SPECIALS,
            normalizer=normalizers.NFC()),
        "llama2_style": _sentencepiece_style(metaspace=False),
        "gemma_style": _sentencepiece_style(metaspace=True),
    }
    # Added tokens with strip rules and a non-special added token, as Phi-3 has.
    made["qwen2_style"].add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    made["gpt2_bytelevel"].add_special_tokens([AddedToken("<|end|>", rstrip=True, special=True, normalized=False)])
    made["llama2_style"].add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
    names = []
    for name, tok in made.items():
        d = out / "tokenizers" / name
        d.mkdir(parents=True, exist_ok=True)
        tok.save(str(d / "tokenizer.json"), pretty=False)
        write_tokenizer_goldens(d)
        names.append(name)
    return names


def write_tokenizer_goldens(d: Path, strings=HARD_STRINGS) -> None:
    """goldens.json beside tokenizer.json: ids (with and without special tokens) and decodes."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    cases = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids, "ids_special": tok.encode(s).ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    (d / "goldens.json").write_text(json.dumps(cases, ensure_ascii=False) + "\n", encoding="utf-8")


# -- chat templates ------------------------------------------------------------------------------
# Llama 3, Llama 3.2, Phi-3, Qwen2.5, Qwen3 and Gemma 3 templates as those models publish them in
# tokenizer_config.json (short, factual formats); SmolLM2's comes from its GGUF and the Gemma
# fallback from mlxedge.formats.gguf_tokenizer.

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA3_2 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
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

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
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
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

QWEN2_5 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
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
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
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
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}]

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system_multi": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "unicode_whitespace": [
        {"role": "user", "content": "  Ünïcödé 😀 日本語\n\ttabs and trailing spaces   "},
        {"role": "assistant", "content": "\nOK — noted.\n"},
        {"role": "user", "content": "line1\r\nline2"},
    ],
    "tool_call": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
        {"role": "tool", "content": "22 degrees, sunny"},
        {"role": "user", "content": "Thanks!"},
    ],
    "thinking": [
        {"role": "user", "content": "Think first: 1+1?"},
        {"role": "assistant", "content": "<think>\nSimple addition.\n</think>\n\n2"},
        {"role": "user", "content": "And 2+2?"},
    ],
    "not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}

# template name -> (conversations to render, extra context variables per render)
PLAN = {
    "chatml_tiny": (["single", "system_multi", "unicode_whitespace"], [{}]),
    "smollm2": (["single", "system_multi", "unicode_whitespace"], [{}]),
    "gemma_gguf": (["single", "system_multi", "unicode_whitespace"], [{}]),
    "gemma3": (["single", "system_multi", "unicode_whitespace", "not_alternating"], [{}]),
    "llama3": (["single", "system_multi", "unicode_whitespace"], [{}]),
    "llama3_2": (["single", "system_multi", "unicode_whitespace", "tool_call"],
                 [{"date_string": "26 Jul 2024"}, {"date_string": "01 Jan 2025", "tools": TOOLS},
                  {"date_string": "01 Jan 2025", "tools": TOOLS, "tools_in_user_message": False}]),
    "phi3": (["single", "system_multi", "unicode_whitespace"], [{}]),
    "qwen2_5": (["single", "system_multi", "unicode_whitespace", "tool_call"], [{}, {"tools": TOOLS}]),
    "qwen3": (["single", "system_multi", "thinking", "tool_call"],
              [{}, {"enable_thinking": False}, {"tools": TOOLS}]),
}



def make_templates(out: Path) -> list[str]:
    """Real templates rendered by transformers' jinja2 setup (the renderer mlx-lm uses)."""
    import gguf
    from transformers.utils.chat_template_utils import _compile_jinja_template

    import tiny_models
    from mlxedge import assets
    from mlxedge.formats import gguf_tokenizer

    reader = gguf.GGUFReader(str(assets.smollm2_gguf()))
    field = reader.fields["tokenizer.chat_template"]
    templates = {
        "chatml_tiny": tiny_models.CHATML_TEMPLATE,
        "smollm2": bytes(field.parts[field.data[0]]).decode("utf-8"),
        "gemma_gguf": gguf_tokenizer.GEMMA_CHAT_TEMPLATE,
        "gemma3": GEMMA3, "llama3": LLAMA3, "llama3_2": LLAMA3_2, "phi3": PHI3,
        "qwen2_5": QWEN2_5, "qwen3": QWEN3,
    }
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    cases = []
    for name, (conversations, contexts) in PLAN.items():
        compiled = _compile_jinja_template(templates[name])
        for conv in conversations:
            for extra in contexts:
                for agp in (True, False):
                    context = {"messages": CONVERSATIONS[conv], "add_generation_prompt": agp, **specials, **extra}
                    case = {"template": name, "conversation": conv, "context": context}
                    try:
                        case["output"] = compiled.render(**context)
                    except Exception as e:  # raise_exception(...) in the template
                        case["error"] = str(e)
                    cases.append(case)
    d = out / "templates"
    d.mkdir(parents=True, exist_ok=True)
    (d / "templates.json").write_text(json.dumps(templates, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (d / "cases.json").write_text(json.dumps(cases, ensure_ascii=False) + "\n", encoding="utf-8")
    return list(templates)


# -- sampling ------------------------------------------------------------------------------------

SAMPLER_CASES = [
    {"temp": 0.7, "top_p": 0.9},
    {"temp": 1.0, "top_p": 0.5, "min_p": 0.05},
    {"temp": 1.0, "min_p": 0.1, "min_tokens_to_keep": 5},
    {"temp": 0.8, "top_k": 7},
    {"temp": 1.2, "top_p": 0.95, "min_p": 0.02, "top_k": 20},
    {"temp": 1.0, "repetition_penalty": 1.3},
    {"temp": 1.0, "repetition_penalty": 0.8, "top_k": 10},
]


def make_sampling(out: Path) -> int:
    """For random logits: mlx-lm's penalized logits and the tokens its filters keep."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_repetition_penalty

    rng = np.random.default_rng(7)
    cases = []
    for i, params in enumerate(SAMPLER_CASES):
        logits = (rng.standard_normal(64) * 3).astype(np.float32)
        history = [int(t) for t in rng.integers(0, 64, size=30)]
        x = mx.array(logits)[None]
        if params.get("repetition_penalty"):
            x = make_repetition_penalty(params["repetition_penalty"], 20)(mx.array(history), x)
        penalized = np.array(x[0])
        lp = x - mx.logsumexp(x, axis=-1, keepdims=True)
        if 0 < params.get("top_p", 0) < 1:
            lp = apply_top_p(lp, params["top_p"])
        if params.get("min_p"):
            lp = apply_min_p(lp, params["min_p"], params.get("min_tokens_to_keep", 1))
        if params.get("top_k"):
            lp = apply_top_k(lp, params["top_k"])
        kept = [int(j) for j in np.nonzero(np.isfinite(np.array(lp[0])))[0]]
        cases.append({"params": params, "logits": logits.tolist(), "history": history,
                      "penalized": penalized.tolist(), "kept": kept})
    (out / "sampling.json").write_text(json.dumps(cases) + "\n")
    return len(cases)


# -- tiny models ---------------------------------------------------------------------------------

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
# (name, arch, tiny_bundle keyword arguments): every architecture float and quantized, every bit
# width, F32/F16/BF16 weights and scales, per-module overrides, rope scaling variants.
TINY = [
    ("llama_f32", "llama", {}),
    ("llama_q4_bf16", "llama", {"dtype": "bfloat16", "quantize": {"bits": 4, "group_size": 32},
                                "rope_scaling": LLAMA3_ROPE}),
    ("llama_mixed", "llama", {"dtype": "float16", "quantize": "MIXED"}),
    ("llama_q2", "llama", {"dtype": "float16", "quantize": {"bits": 2, "group_size": 64}}),
    ("llama_q3", "llama", {"dtype": "float16", "quantize": {"bits": 3, "group_size": 32}}),
    ("llama_q5", "llama", {"dtype": "float16", "quantize": {"bits": 5, "group_size": 64}}),
    ("llama_q6", "llama", {"dtype": "float32", "quantize": {"bits": 6, "group_size": 32}}),
    ("qwen2_f16", "qwen2", {"dtype": "float16"}),
    ("qwen2_q4", "qwen2", {"dtype": "float16", "quantize": {"bits": 4, "group_size": 32}}),
    ("qwen3_bf16", "qwen3", {"dtype": "bfloat16"}),
    ("qwen3_q8", "qwen3", {"dtype": "float16", "quantize": {"bits": 8, "group_size": 64}}),
    ("gemma3_f16", "gemma3_text", {"dtype": "float16"}),
    ("gemma3_q4", "gemma3_text", {"dtype": "float16", "quantize": {"bits": 4, "group_size": 32}}),
    ("phi3_f16", "phi3", {"dtype": "float16"}),
    ("phi3_mixed_longrope", "phi3", {
        "dtype": "float16", "quantize": "MIXED", "partial_rotary_factor": 0.5,
        "max_position_embeddings": 16384, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope", "long_factor": [1.0, 1.5, 2.0, 4.0],
                         "short_factor": [1.0, 1.0, 1.0, 1.0]}}),
]
TOKENS = [256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 257, 200, 3]
PREFILL = 7      # the Swift test prefills this many tokens, then decodes the rest one by one
GENERATE = 8     # greedy tokens after TOKENS


def make_tiny(root: Path) -> list[str]:
    """Tiny random bundles (tests/tiny_models.py) in `root`, with mlx-lm logits as goldens:
    golden_logits.f32 = (len(TOKENS), vocab) little-endian float32, row-major."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    import tiny_models

    names = []
    shutil.rmtree(root, ignore_errors=True)
    for name, arch, kwargs in TINY:
        kwargs = dict(kwargs)
        if kwargs.get("quantize") == "MIXED":
            kwargs["quantize"] = tiny_models.MIXED
        # Smaller than tiny_bundle's default so the committed fixtures stay small.
        kwargs.setdefault("vocab_size", 272)
        if "quantize" not in kwargs:
            kwargs.update(hidden_size=32, intermediate_size=64)
        d = tiny_models.tiny_bundle(arch, root / name, seed=len(names), **kwargs)
        model, _ = load(str(d))
        model.set_dtype(mx.float32)  # the same weights, computed in float32 like the Swift runtime
        logits = model(mx.array(TOKENS)[None])[0].astype(mx.float32)  # (T, vocab)
        mx.eval(logits)
        np.asarray(logits, dtype="<f4").tofile(d / "golden_logits.f32")
        greedy = []
        for tok, _ in generate_step(mx.array(TOKENS), model, max_tokens=GENERATE):
            greedy.append(int(tok))
        (d / "golden.json").write_text(json.dumps({
            "tokens": TOKENS, "prefill": PREFILL, "vocab_size": int(logits.shape[-1]),
            "greedy": greedy}) + "\n")
        names.append(name)
    return names


# -- the real SmolLM2 bundle ---------------------------------------------------------------------

REAL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "List three primary colors."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
RAW_PROMPTS = ["The capital of France is", "The three primary colors are", "Once upon a time, by the sea,"]
KL_TOKENS = 128
GREEDY_TOKENS = 8


def kl_text() -> str:
    """Human-written text installed with numpy (never /usr/share/common-licenses)."""
    sp = site_packages()
    return next(sp.glob("numpy-*.dist-info/licenses/LICENSE.txt")).read_text(encoding="utf-8")


def make_real(out: Path) -> list[str]:
    """Convert SmolLM2 (and Gemma 3) from their GGUFs into swift/Generated and record mlx-lm's
    greedy continuations and log-probabilities there; tokenizer goldens for both tokenizers."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    from mlxedge import assets
    from mlxedge.convert import convert

    made = []
    for name, gguf_path in (("smollm2", assets.smollm2_gguf), ("gemma3", assets.gemma3_gguf)):
        try:
            src = gguf_path()
        except Exception as e:  # the model package is not installed: skip, the Swift tests skip too
            print(f"skipping {name}: {e}")
            continue
        bundle = out / name
        out.mkdir(parents=True, exist_ok=True)
        if not (bundle / "config.json").exists():
            convert(src, bundle, force=True, show_progress=False)
        tok_dir = out / "tokenizers" / name
        tok_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle / "tokenizer.json", tok_dir / "tokenizer.json")
        write_tokenizer_goldens(tok_dir, HARD_STRINGS + [kl_text()[:2000]])

        model, tokenizer = load(str(bundle))
        # The same weights computed in float32, like the Swift runtime (mlx's float16 CPU path is
        # emulated and takes many minutes here).
        model.set_dtype(mx.float32)
        prompts = []
        chat = getattr(tokenizer, "chat_template", None) is not None
        for messages, raw in zip(REAL_PROMPTS, RAW_PROMPTS):
            # Base models (Gemma 3 270M) have no template: they get raw completions.
            if chat:
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            else:
                text = raw
            ids = tokenizer.encode(text, add_special_tokens=not text.startswith(tokenizer.bos_token or "\0"))
            greedy = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=GREEDY_TOKENS)]
            prompts.append({"messages": messages if chat else None, "text": text, "ids": ids, "greedy": greedy})
        kl_ids = tokenizer.encode(kl_text())[:KL_TOKENS]
        logits = model(mx.array(kl_ids)[None])[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        mx.eval(logprobs)
        np.asarray(logprobs, dtype="<f4").tofile(bundle / "golden_logprobs.f32")
        (bundle / "golden.json").write_text(json.dumps({
            "prompts": prompts, "kl_ids": kl_ids, "vocab_size": int(logits.shape[-1])}, ensure_ascii=False) + "\n")
        made.append(name)
    return made


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="tokenizers,templates,sampling,tiny,real")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    if "tokenizers" in parts:
        print("tokenizers:", ", ".join(make_tokenizers(FIXTURES)))
    if "templates" in parts:
        print("templates:", ", ".join(make_templates(FIXTURES)))
    if "sampling" in parts:
        print("sampling cases:", make_sampling(FIXTURES))
    if "tiny" in parts:
        print("tiny bundles:", ", ".join(make_tiny(TINY_DIR)))
    if "real" in parts:
        print("real models:", ", ".join(make_real(GENERATED)) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
