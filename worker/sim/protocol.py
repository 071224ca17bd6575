"""Request parsing and validation, in vLLM's error format.

A parsed request is a :class:`GenRequest`; anything invalid raises :class:`ApiError`, which the
server turns into ``{"error": {"message", "type", "param", "code"}}`` with that status.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
                 headers: Mapping[str, str] | None = None, in_stream: bool = False) -> None:
        super().__init__(message)
        # found by the engine rather than the request's validation: a stream request gets it as
        # an error event in a 200 stream, as vLLM sends it
        self.in_stream = in_stream
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or ERROR_TYPES.get(status, "BadRequestError")
        self.code = status if code is None else code
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.err_type,
                                       "param": self.param, "code": self.code}})


MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


@dataclass(slots=True)
class GenRequest:
    """What the engine needs to know about one generation request.

    ``prompts`` holds one token-id list per prompt (chat: always one); the answer has
    ``len(prompts) * n`` choices, choice ``p * n + i`` being sample ``i`` of prompt ``p``."""

    kind: str  # "chat" | "completion"
    prompts: list[list[int]]
    max_tokens: int
    stream: bool
    include_usage: bool
    return_token_ids: bool
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    role: str  # the role of the answer (chat)
    continuation: bool  # continues an assistant message or a token-id prompt
    n: int = 1
    echo: bool = False
    prompt_texts: list[str] = field(default_factory=list)  # for echo (completions)
    logprobs: int | None = None  # completions: ``logprobs``; chat: ``top_logprobs`` when ``logprobs``
    budgets: list[int] = field(default_factory=list)  # max_tokens of each prompt
    raw: Mapping[str, Any] | None = None  # the request body, where the answer echoes it
    continuous_usage: bool = False  # stream_options.continuous_usage_stats (with include_usage)

    @property
    def prompt_ids(self) -> list[int]:
        """The first (for chat, the only) prompt."""
        return self.prompts[0]


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
    messages = messages_of(body.get("messages"))
    add_gen = flag(body, "add_generation_prompt", True)
    cont = flag(body, "continue_final_message", False)
    if add_gen and cont:
        raise ApiError(400, "Cannot set both `continue_final_message` and `add_generation_prompt` "
                            "to True.", param="continue_final_message")
    prompt = render_chat(messages, add_generation_prompt=add_gen, continue_final_message=cont)
    role = "assistant" if add_gen else messages[-1]["role"]
    continuation = cont and messages[-1]["role"] == "assistant"
    req = _finish(body, cfg, "chat", [tok.encode(prompt)], role, continuation,
                  _opt_int(body, "max_completion_tokens") or _opt_int(body, "max_tokens"))
    req.logprobs = _chat_logprobs(body, tok)
    _check_tools(body)
    return req


def _check_tools(body: Mapping[str, Any]) -> None:
    """The simulator plays a pool started without a tool-call parser (as the tiny model is):
    with ``tools``, ``tool_choice`` "auto" (the default) and "required" are refused as vLLM
    refuses them; "none" answers with text; a named function is not simulated (text too)."""
    if not body.get("tools"):
        return
    choice = body.get("tool_choice", "auto")
    if choice == "auto":
        raise ApiError(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
    if choice == "required":
        raise ApiError(400, 'tool_choice="required" requires --tool-call-parser to be set')


def parse_completion(body: Mapping[str, Any], cfg: SimConfig, tok: Tokenizer) -> GenRequest:
    check_model(body, cfg)
    prompts = _prompts(body.get("prompt"), tok)
    ids = [p for p, _ in prompts]
    continuation = all(isinstance(p, list) for p in _as_batch(body.get("prompt")))
    req = _finish(body, cfg, "completion", ids, "assistant", continuation, _opt_int(body, "max_tokens"),
                  exact=[text is None for _, text in prompts])
    # vLLM 0.32 drops the echo when token ids are returned (recorded: stream and non-stream)
    req.echo = flag(body, "echo", False) and not req.return_token_ids
    req.prompt_texts = [text if text is not None else tok.decode(p) for p, text in prompts]
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if type(logprobs) is not int:
            raise ApiError(400, "logprobs must be an integer.", param="logprobs")
        req.logprobs = _logprobs_count(logprobs, tok)
    return req


def _as_batch(prompt: Any) -> list[Any]:
    """A prompt or a batch of prompts, as a batch: ``"a"``, ``[1, 2]``, ``["a", "b"]``, ``[[1], [2]]``."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return prompt
    return [prompt]


def _prompts(prompt: Any, tok: Tokenizer) -> list[tuple[list[int], str | None]]:
    """Each prompt's token ids and text (None for a token-id prompt)."""
    if not prompt:
        raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt")
    out: list[tuple[list[int], str | None]] = []
    for one in _as_batch(prompt):
        if isinstance(one, str) and one:
            out.append((tok.encode(one), one))
        elif isinstance(one, list) and one and all(type(t) is int for t in one):
            bad = next((t for t in one if not tok.is_valid(t)), None)
            if bad is not None:
                raise ApiError(400, f"Token id {bad} is out of vocabulary", in_stream=True)
            out.append((list(one), None))
        elif one == "" or one == []:
            raise ApiError(400, "The decoder prompt cannot be empty", in_stream=True)
        else:
            raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.",
                           param="prompt")
    return out


def _logprobs_count(k: int, tok: Tokenizer) -> int:
    if k < 0:
        k = tok.vocab_size  # -1: the whole vocabulary, as vLLM reads it
    if k > MAX_LOGPROBS:
        raise ApiError(400, f"Requested sample logprobs of {k}, which is greater than max allowed: "
                            f"{MAX_LOGPROBS} (parameter=logprobs, value={k})", param="logprobs", in_stream=True)
    return k


def _chat_logprobs(body: Mapping[str, Any], tok: Tokenizer) -> int | None:
    """Chat asks with ``logprobs: true`` and ``top_logprobs: k`` (0 when absent)."""
    want = flag(body, "logprobs", False)
    top = body.get("top_logprobs")
    if top is not None and (type(top) is not int):
        raise ApiError(400, "top_logprobs must be an integer.", param="top_logprobs")
    if top is not None and not want:
        raise ApiError(400, "when using `top_logprobs`, `logprobs` must be set to true. "
                            "(parameter=top_logprobs)", param="top_logprobs")
    return _logprobs_count(top or 0, tok) if want else None


def _finish(body: Mapping[str, Any], cfg: SimConfig, kind: str, prompts: list[list[int]], role: str,
            continuation: bool, max_tokens: int | None, exact: list[bool] | None = None) -> GenRequest:
    stream = flag(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object.", param="stream_options")
    if options and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.",
                       param="stream_options")
    temperature = _temperature(body)
    n = body.get("n", 1)
    if n is None:
        n = 1
    if type(n) is not int:
        raise ApiError(400, "n must be an integer.", param="n")
    if n < 1:
        raise ApiError(400, f"n must be at least 1, got {n}.")
    if n > 1 and temperature == 0.0:
        raise ApiError(400, f"n must be 1 when using greedy sampling, got {n}.")
    counted = exact or [False] * len(prompts)
    budgets = [_budget(cfg, len(ids), max_tokens, exact=e) for ids, e in zip(prompts, counted, strict=True)]
    return GenRequest(
        kind=kind, prompts=prompts, max_tokens=budgets[0], budgets=budgets, stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        continuous_usage=bool(options and options.get("include_usage") and options.get("continuous_usage_stats")),
        return_token_ids=flag(body, "return_token_ids", False),
        temperature=temperature, seed=_opt_int(body, "seed", minimum=None),
        stop=_stop(body.get("stop")), role=role, continuation=continuation, n=n,
    )


def _budget(cfg: SimConfig, n_prompt: int, max_tokens: int | None, *, exact: bool = True) -> int:
    """The tokens a prompt may get, as vLLM 0.32 decides: a prompt longer than the context is
    refused; ``max_tokens`` is lowered to what fits after the prompt (an error if nothing fits).
    One difference: ``max_tokens`` above the context length is refused with the older "maximum
    context length" message (vLLM 0.32: "max_tokens=N cannot be greater than max_model_len=M"),
    which the gateway's tests match.  vLLM tokenizes a text prompt only up to one token past the
    context, so it counts "at least" that many (``exact``: a token-id prompt, counted whole)."""
    limit = cfg.max_model_len
    if n_prompt > limit:
        count = n_prompt if exact else f"at least {limit + 1}"
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your prompt "
                            f"contains {count} input tokens, which exceeds this limit even without any "
                            f"output tokens. Please reduce the length of the input prompt. "
                            f"(parameter=input_tokens, value={n_prompt if exact else limit + 1})",
                       param="input_tokens")
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(400, context_message(limit, n_prompt, max_tokens), param="max_tokens")
    budget = min(limit - n_prompt, cfg.default_max_tokens if max_tokens is None else max_tokens)
    if budget < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {budget}. (parameter=max_tokens, "
                            f"value={budget})", param="max_tokens")
    return budget


def context_message(limit: int, n_prompt: int, max_tokens: int) -> str:
    return (f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{max_tokens} output tokens and your prompt contains at least {n_prompt} input "
            f"tokens, for a total of at least {n_prompt + max_tokens} tokens. Please reduce the "
            "length of the input prompt or the number of requested output tokens.")


def messages_of(value: Any) -> list[dict[str, str]]:
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


def flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
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
