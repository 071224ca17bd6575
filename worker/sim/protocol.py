"""Request parsing and validation, in vLLM's error format.

A parsed request is a :class:`GenRequest`; anything invalid raises :class:`ApiError`, which the
server turns into ``{"error": {"message", "type", "param", "code"}}`` with that status.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from worker.sim.config import SimConfig
from worker.sim.tokenizer import Tokenizer, render_chat

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}


class ApiError(Exception):
    """An error response: status, message, vLLM error type and the offending parameter."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 err_type: str | None = None, code: int | str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or ERROR_TYPES.get(status, "BadRequestError")
        self.code = status if code is None else code
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.err_type,
                                       "param": self.param, "code": self.code}})


@dataclass(slots=True)
class GenRequest:
    """What the engine needs to know about one generation request."""

    kind: str  # "chat" | "completion"
    prompt_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    return_token_ids: bool
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    role: str  # the role of the answer (chat)
    continuation: bool  # continues an assistant message or a token-id prompt


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    return body


def check_model(body: Mapping[str, Any], cfg: SimConfig) -> None:
    model = body.get("model")
    if model is not None and model != cfg.model:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model")


def parse_chat(body: Mapping[str, Any], cfg: SimConfig, tok: Tokenizer) -> GenRequest:
    check_model(body, cfg)
    messages = _messages(body.get("messages"))
    add_gen = _flag(body, "add_generation_prompt", True)
    cont = _flag(body, "continue_final_message", False)
    if add_gen and cont:
        raise ApiError(400, "Cannot set both `continue_final_message` and `add_generation_prompt` "
                            "to True.", param="continue_final_message")
    prompt = render_chat(messages, add_generation_prompt=add_gen, continue_final_message=cont)
    role = "assistant" if add_gen else messages[-1]["role"]
    continuation = cont and messages[-1]["role"] == "assistant"
    return _finish(body, cfg, "chat", tok.encode(prompt), role, continuation,
                   _opt_int(body, "max_completion_tokens") or _opt_int(body, "max_tokens"))


def parse_completion(body: Mapping[str, Any], cfg: SimConfig, tok: Tokenizer) -> GenRequest:
    check_model(body, cfg)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        ids, continuation = tok.encode(prompt), False
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        if not all(tok.is_valid(t) for t in prompt):
            raise ApiError(400, f"Token id out of vocabulary (size {tok.vocab_size}).", param="prompt")
        ids, continuation = list(prompt), True
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "The simulator serves one prompt per request.", param="prompt")
    else:
        raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.",
                       param="prompt")
    return _finish(body, cfg, "completion", ids, "assistant", continuation,
                   _opt_int(body, "max_tokens"))


def _finish(body: Mapping[str, Any], cfg: SimConfig, kind: str, ids: list[int], role: str,
            continuation: bool, max_tokens: int | None) -> GenRequest:
    stream = _flag(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object.", param="stream_options")
    if options and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.",
                       param="stream_options")
    n = body.get("n")
    if n not in (None, 1):
        raise ApiError(400, "The simulator supports n=1 only.", param="n")
    return GenRequest(
        kind=kind, prompt_ids=ids, max_tokens=_budget(cfg, len(ids), max_tokens), stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        return_token_ids=_flag(body, "return_token_ids", False),
        temperature=_temperature(body), seed=_opt_int(body, "seed", minimum=None),
        stop=_stop(body.get("stop")), role=role, continuation=continuation,
    )


def _budget(cfg: SimConfig, n_prompt: int, max_tokens: int | None) -> int:
    limit = cfg.max_model_len
    if max_tokens is None:
        if n_prompt >= limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, "
                                f"your request has {n_prompt} input tokens. Please reduce the "
                                "length of the input messages.", param="input_tokens")
        return min(cfg.default_max_tokens, limit - n_prompt)
    if n_prompt + max_tokens > limit:
        raise ApiError(400, context_message(limit, n_prompt, max_tokens), param="max_tokens")
    return max_tokens


def context_message(limit: int, n_prompt: int, max_tokens: int) -> str:
    return (f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{max_tokens} output tokens and your prompt contains at least {n_prompt} input "
            f"tokens, for a total of at least {n_prompt + max_tokens} tokens. Please reduce the "
            "length of the input prompt or the number of requested output tokens.")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list.", param="messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string role.",
                           param="messages")
        out.append({"role": msg["role"], "content": _content(msg.get("content"), i)})
    return out


def _content(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts.",
                   param="messages")


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean.", param=name)
    return value


def _opt_int(body: Mapping[str, Any], name: str, minimum: int | None = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise ApiError(400, f"{name} must be an integer.", param=name)
    if minimum is not None and value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}, got {value}.", param=name)
    return value


def _temperature(body: Mapping[str, Any]) -> float:
    value = body.get("temperature")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ApiError(400, f"temperature must be a number >= 0, got {value!r}.", param="temperature")
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ApiError(400, "stop must be a string or a list of strings.", param="stop")
