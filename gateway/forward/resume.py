"""Mid-stream resume: what the client already has, how to ask another pool for the rest,
and how to splice the continuation into the client's stream.

Strategies, best first:
- ``tokens``: ``/v1/completions`` with ``prompt = prompt token ids + generated token ids`` and
  the remaining ``max_tokens`` — exact at token level (vLLM's ``return_token_ids``).
- ``text``: completions ``prompt + text so far``, or chat with the text so far as an open
  assistant message (``continue_final_message``, ``add_generation_prompt: false``).
- ``regenerate``: the original request again, output skipped until it has reproduced
  exactly what the client has (deterministic requests only: temperature 0 or a seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gateway.forward.fields as fields
from gateway.request import ParsedRequest
from gateway.sse import events, parse_event

# sampling parameters a token-level continuation carries over from a chat request
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "presence_penalty",
             "frequency_penalty", "repetition_penalty", "ignore_eos", "logit_bias", "min_tokens",
             "skip_special_tokens", "spaces_between_special_tokens", "user")
# constrained decoding restarts its grammar on a continuation: only regenerate is exact
_CONSTRAINED = ("response_format", "tools", "tool_choice", "guided_json", "guided_regex", "guided_choice",
                "guided_grammar", "structured_outputs", "logprobs", "top_logprobs", "echo", "suffix")


class ResumeMismatch(Exception):
    """A regeneration did not reproduce what the client already received."""


@dataclass(slots=True)
class StreamState:
    """What the client has received of one generation (choice 0)."""

    kind: str  # client's API: "chat" | "completions"
    id: str | None = None
    created: int | None = None
    model: str | None = None
    role_sent: bool = False
    prompt_ids: list[int] | None = None
    gen_ids: list[int] | None = field(default_factory=list)  # None once a chunk came without ids
    text: str = ""
    content_events: int = 0
    finish_reason: str | None = None
    stop_reason: Any = None
    usage: dict[str, Any] | None = None
    prompt_tokens: int | None = None

    def observe(self, doc: dict[str, Any]) -> None:
        """Account one upstream event (as the client saw it, ids included)."""
        # each field read with its kind checked (gateway/forward/fields.py): a pool's junk reads as absent
        self.id = self.id or fields.text(doc.get("id"))
        self.created = self.created or fields.whole(doc.get("created"))
        self.model = self.model or fields.text(doc.get("model"))
        if self.prompt_ids is None:
            self.prompt_ids = fields.token_ids(doc.get("prompt_token_ids"))
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            prompt = fields.whole(usage.get("prompt_tokens"))
            self.prompt_tokens = self.prompt_tokens if prompt is None else prompt
        for choice in fields.choices(doc):
            if fields.index(choice) == 0:
                self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        if self.prompt_ids is None:
            self.prompt_ids = fields.token_ids(choice.get("prompt_token_ids"))
        delta = fields.delta(choice)
        if delta is not None and delta.get("role"):
            self.role_sent = True
        self.add(fields.content(choice), fields.token_ids(choice.get("token_ids")),
                 fields.text(choice.get("finish_reason")), choice.get("stop_reason"))

    def add(self, text: str, ids: list[int] | None, finish: str | None, stop_reason: Any) -> None:
        """Account text and token ids that reached the client (and the end, if it came)."""
        if text:
            self.text += text
            self.content_events += 1
        if self.gen_ids is not None:
            if ids is not None:
                self.gen_ids.extend(ids)
            elif text:
                self.gen_ids = None  # this chunk's ids are unknown: token-level resume is off
        if finish:
            self.finish_reason, self.stop_reason = finish, stop_reason

    @property
    def generated(self) -> int:
        return len(self.gen_ids) if self.gen_ids is not None else self.content_events


def replay(raw: bytes, kind: str) -> StreamState:
    """The state of a stream from the raw upstream bytes relayed so far."""
    st = StreamState(kind)
    for payload in events(raw):
        doc = parse_event(payload)
        if doc is not None:
            st.observe(doc)
    return st


def deterministic(body: dict[str, Any]) -> bool:
    return body.get("temperature") == 0 or body.get("seed") is not None


def seeded_sampling(body: dict[str, Any]) -> bool:
    """A seed with sampling (temperature absent or above 0): the seeded sampler's state lives
    in the pool, so only regenerating with the same seed reproduces the text; a continuation
    from token ids or text samples the rest from a fresh state (issue 10, defect 4)."""
    return body.get("seed") is not None and body.get("temperature") != 0


def choices_of(body: dict[str, Any]) -> int:
    """How many choices the answer has: ``n`` per prompt, times the prompts of a list
    (a list of token ids is one prompt; a list of strings or of id lists is several)."""
    n = body.get("n")
    n = n if isinstance(n, int) and n > 0 else 1
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        n *= len(prompt)
    return n


def resumable(body: dict[str, Any], kind: str = "completions") -> bool:
    """Whether a cut stream of this request can be continued exactly as the client sees it.
    Only chat and completions streams are (a Responses API stream is relayed), and not with
    several choices (only one generation is tracked and continued), echo (the echoed prompt
    and ``return_token_ids`` exclude each other in vLLM), logprobs (a continuation's events
    would lose them).  Those are relayed as they are and end with the in-band error
    if cut (docs/failover.md)."""
    if kind not in ("chat", "completions") or choices_of(body) != 1 or body.get("echo"):
        return False
    return body.get("logprobs") in (None, False) and body.get("prompt_logprobs") is None


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) else None


@dataclass(slots=True)
class Continuation:
    strategy: str  # "tokens" | "text" | "regenerate"
    path: str
    body: dict[str, Any]
    skip: str = ""  # regenerate: text to reproduce before anything is relayed


def plan_continuation(req: ParsedRequest, st: StreamState, upstream_model: str, can_continue: bool,
                      want: str) -> Continuation | None:
    """The best continuation for ``st`` on a pool, or None when none is possible."""
    body = req.body
    remaining = None
    if (limit := _max_tokens(body)) is not None:
        remaining = limit - st.generated
        if remaining <= 0:
            return None
    if not resumable(body, req.kind):
        return None
    constrained = any(k in body for k in _CONSTRAINED) or seeded_sampling(body)
    if can_continue and not constrained and want != "off":
        if want == "token_ids" and st.prompt_ids is not None and st.gen_ids is not None:
            return Continuation("tokens", "/v1/completions", _tokens_body(body, st, upstream_model, remaining))
        text = _text_body(req, st, upstream_model, remaining)
        if text is not None:
            return text
    if deterministic(body) or not st.text:
        again = {**body, "model": upstream_model, "stream": True}
        return Continuation("regenerate", req.path, again, st.text)
    return None


def _common(body: dict[str, Any], model: str, remaining: int | None) -> dict[str, Any]:
    out = {k: body[k] for k in _SAMPLING if k in body}
    out.update(model=model, stream=True, stream_options={"include_usage": True})
    if remaining is not None:
        out["max_tokens"] = remaining
    return out


def _tokens_body(body: dict[str, Any], st: StreamState, model: str, remaining: int | None) -> dict[str, Any]:
    out = _common(body, model, remaining)
    out["prompt"] = list(st.prompt_ids or ()) + list(st.gen_ids or ())
    out["return_token_ids"] = True
    return out


def _text_body(req: ParsedRequest, st: StreamState, model: str, remaining: int | None) -> Continuation | None:
    body = req.body
    if req.kind == "completions":
        if not isinstance(body.get("prompt"), str):
            return None
        out = {**_common(body, model, remaining), "prompt": body["prompt"] + st.text}
        return Continuation("text", "/v1/completions", out)
    out = {**{k: v for k, v in body.items() if k not in ("max_tokens", "max_completion_tokens")},
           **_common(body, model, remaining)}
    out["messages"] = [*body["messages"], {"role": "assistant", "content": st.text}]
    out.update(continue_final_message=True, add_generation_prompt=False)
    return Continuation("text", "/v1/chat/completions", out)
