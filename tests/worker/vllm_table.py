"""The table of requests whose real vLLM answers are recorded as fixtures (see
``record_vllm_fixtures.py``) and replayed against the simulator by ``test_sim_vllm_shapes.py``.

Each entry: name -> (method, path, body or None, stream).  Greedy (temperature 0) and small
``max_tokens`` so the answers are short; ``n > 1`` is sampled with a seed (vLLM refuses ``n > 1``
with greedy sampling)."""
from __future__ import annotations

from typing import Any

MODEL = "tiny-chat"
MSGS = [{"role": "user", "content": "Hello there"}]
USAGE = {"stream_options": {"include_usage": True}}


def _cmpl(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, **extra}


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MSGS, "max_tokens": 4, "temperature": 0, **extra}


TWO_PROMPTS = ["Once upon a time", "Hello there"]
SEEDED = {"temperature": 1.0, "seed": 7}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]

TABLE: dict[str, tuple[str, str, dict[str, Any] | None, bool]] = {
    "completion": ("POST", "/v1/completions", _cmpl(), False),
    "completion_stream": ("POST", "/v1/completions", _cmpl(stream=True), True),
    "chat": ("POST", "/v1/chat/completions", _chat(), False),
    "chat_stream": ("POST", "/v1/chat/completions", _chat(stream=True), True),
    "completion_n2": ("POST", "/v1/completions", _cmpl(n=2, **SEEDED), False),
    "completion_n2_stream": ("POST", "/v1/completions",
                             _cmpl(n=2, stream=True, return_token_ids=True, **USAGE, **SEEDED), True),
    "completion_list": ("POST", "/v1/completions", _cmpl(prompt=TWO_PROMPTS, n=2, return_token_ids=True, **SEEDED), False),
    "completion_list_stream": ("POST", "/v1/completions",
                               _cmpl(prompt=TWO_PROMPTS, n=2, stream=True, return_token_ids=True, **USAGE, **SEEDED), True),
    "completion_list_token_ids": ("POST", "/v1/completions", _cmpl(prompt=[[11, 12, 13], [14, 15]]), False),
    "completion_echo": ("POST", "/v1/completions", _cmpl(echo=True), False),
    "completion_echo_stream": ("POST", "/v1/completions", _cmpl(echo=True, stream=True, **USAGE), True),
    "completion_echo_token_ids": ("POST", "/v1/completions", _cmpl(prompt=[11, 12, 13], echo=True), False),
    "completion_logprobs": ("POST", "/v1/completions", _cmpl(logprobs=2), False),
    "completion_logprobs_stream": ("POST", "/v1/completions", _cmpl(logprobs=2, stream=True), True),
    "completion_echo_logprobs": ("POST", "/v1/completions", _cmpl(echo=True, logprobs=1), False),
    "completion_echo_logprobs_stream": ("POST", "/v1/completions",
                                        _cmpl(echo=True, logprobs=1, stream=True), True),
    "completion_seed8": ("POST", "/v1/completions", _cmpl(temperature=1.0, seed=8), False),
    "completion_greedy_n2": ("POST", "/v1/completions", _cmpl(n=2), False),
    "chat_n2": ("POST", "/v1/chat/completions", _chat(n=2, return_token_ids=True, **SEEDED), False),
    "chat_n2_stream": ("POST", "/v1/chat/completions",
                       _chat(n=2, stream=True, return_token_ids=True, **USAGE, **SEEDED), True),
    "chat_logprobs": ("POST", "/v1/chat/completions", _chat(logprobs=True, top_logprobs=2), False),
    "chat_logprobs_stream": ("POST", "/v1/chat/completions",
                             _chat(logprobs=True, top_logprobs=2, stream=True), True),
    "chat_logprobs_no_top": ("POST", "/v1/chat/completions", _chat(logprobs=True), False),
    "responses": ("POST", "/v1/responses",
                  {"model": MODEL, "input": "Hello there", "max_output_tokens": 6, "temperature": 0}, False),
    "responses_stream": ("POST", "/v1/responses",
                         {"model": MODEL, "input": "Hello there", "max_output_tokens": 4, "temperature": 0,
                          "stream": True}, True),
    "responses_messages": ("POST", "/v1/responses",
                           {"model": MODEL, "instructions": "Be brief.", "max_output_tokens": 4,
                            "temperature": 0, "input": [{"role": "user", "content": "Hello there"}]}, False),
    "tokenize": ("POST", "/tokenize", {"model": MODEL, "prompt": "Hello there"}, False),
    "tokenize_strs": ("POST", "/tokenize",
                      {"model": MODEL, "prompt": "Hello there", "return_token_strs": True,
                       "add_special_tokens": False}, False),
    "tokenize_messages": ("POST", "/tokenize", {"model": MODEL, "messages": MSGS}, False),
    "detokenize": ("POST", "/detokenize", {"model": MODEL, "tokens": [11, 12, 13]}, False),
    "detokenize_bad": ("POST", "/detokenize", {"model": MODEL, "tokens": [10 ** 9]}, False),
    "model_card": ("GET", f"/v1/models/{MODEL}", None, False),
    "model_card_unknown": ("GET", "/v1/models/nope", None, False),
    "chat_top_logprobs_without_logprobs": ("POST", "/v1/chat/completions", _chat(top_logprobs=2), False),
    "completion_logprobs_too_many": ("POST", "/v1/completions", _cmpl(logprobs=21), False),
    "completion_list_echo_logprobs": ("POST", "/v1/completions", _cmpl(prompt=TWO_PROMPTS, echo=True, logprobs=1), False),
    "completion_stop_n2_stream": ("POST", "/v1/completions",
                                  _cmpl(n=2, stop=[" "], max_tokens=8, stream=True, **SEEDED), True),
    "chat_n2_logprobs": ("POST", "/v1/chat/completions", _chat(n=2, logprobs=True, top_logprobs=1, **SEEDED), False),
    "chat_n2_logprobs_stream": ("POST", "/v1/chat/completions",
                                _chat(n=2, logprobs=True, top_logprobs=1, stream=True, **USAGE, **SEEDED), True),
    "completion_list_echo_stream": ("POST", "/v1/completions",
                                    _cmpl(prompt=TWO_PROMPTS, n=2, echo=True, stream=True, **SEEDED), True),
    "completion_list_logprobs_stream": ("POST", "/v1/completions",
                                        _cmpl(prompt=TWO_PROMPTS, logprobs=2, stream=True, **USAGE), True),
    "error_token_id_out_of_vocab": ("POST", "/v1/completions", _cmpl(prompt=[10 ** 6]), False),
    "error_list_with_empty_prompt": ("POST", "/v1/completions", _cmpl(prompt=["ok", ""]), False),
    "error_context_length": ("POST", "/v1/completions", _cmpl(max_tokens=5000), False),
    "error_prompt_too_long": ("POST", "/v1/completions", _cmpl(prompt=[11] * 2100), False),
    "error_prompt_fills_context": ("POST", "/v1/completions", _cmpl(prompt=[11] * 2048), False),
    "completion_max_tokens_clamped": ("POST", "/v1/completions", _cmpl(prompt=[11] * 2040, max_tokens=16), False),
    "completion_list_stream_continuous_usage": ("POST", "/v1/completions", _cmpl(
        prompt=TWO_PROMPTS, n=2, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True},
        **SEEDED), True),
    "chat_stream_continuous_usage": ("POST", "/v1/chat/completions", _chat(
        stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}), True),
    "chat_tools_auto": ("POST", "/v1/chat/completions", _chat(tools=TOOLS), False),
    "chat_tools_required": ("POST", "/v1/chat/completions", _chat(tools=TOOLS, tool_choice="required"), False),
    "chat_tools_none": ("POST", "/v1/chat/completions", _chat(tools=TOOLS, tool_choice="none"), False),
    "completion_echo_return_token_ids": ("POST", "/v1/completions", _cmpl(echo=True, return_token_ids=True), False),
    "completion_echo_return_token_ids_stream": ("POST", "/v1/completions",
                                                _cmpl(echo=True, return_token_ids=True, stream=True), True),
    "error_token_id_out_of_vocab_stream": ("POST", "/v1/completions", _cmpl(prompt=[10 ** 6], stream=True), True),
    "error_list_with_empty_prompt_stream": ("POST", "/v1/completions", _cmpl(prompt=["ok", ""], stream=True), True),
    "completion_logprobs_too_many_stream": ("POST", "/v1/completions", _cmpl(logprobs=21, stream=True), True),
    "chat_top_logprobs_too_many_stream": ("POST", "/v1/chat/completions",
                                          _chat(logprobs=True, top_logprobs=21, stream=True), True),
    "error_text_prompt_too_long": ("POST", "/v1/completions", _cmpl(prompt="x " * 2100), False),
    "error_chat_prompt_too_long_stream": ("POST", "/v1/chat/completions",
                                          _chat(messages=[{"role": "user", "content": "x " * 2100}], stream=True),
                                          True),
    "models": ("GET", "/v1/models", None, False),
    "version": ("GET", "/version", None, False),
    "models_post": ("POST", "/v1/models", {}, False),
    "tokenize_get": ("GET", "/tokenize", None, False),
    "embeddings": ("POST", "/v1/embeddings", {"model": MODEL, "input": "Hello there"}, False),
    "error_n0": ("POST", "/v1/completions", _cmpl(n=0), False),
    "error_chat_top_logprobs_negative": ("POST", "/v1/chat/completions", _chat(logprobs=True, top_logprobs=-1), False),
}
