"""Turn a continuation's events into events of the client's original stream.

Whatever the continuation's API (a completions request continuing a chat stream, say), the
client keeps seeing its own stream: same id, created, model and object type, no second role
chunk, no duplicated or missing text, one usage block that counts every token, one [DONE]."""
from __future__ import annotations

from typing import Any

import gateway.forward.fields as fields
from gateway.forward.resume import Continuation, ResumeMismatch, StreamState
from gateway.sse import DONE_EVENT, encode_event, events, parse_event


class Splicer:
    def __init__(self, st: StreamState, cont: Continuation, keep_ids: bool, include_usage: bool,
                 models: list[str] | None = None) -> None:
        self.st = st
        # the models the answer came from: named in the final chunk when there are several
        self.models = models if models is not None and len(models) > 1 else None
        self.cont = cont
        self.keep_ids = keep_ids
        self.include_usage = include_usage
        self.skip = cont.skip  # regenerate: text the client already has, still to be reproduced
        self.base_generated = 0 if cont.strategy == "regenerate" else st.generated
        self.done = False
        # without a usage block for the client, the finish waits for the continuation's usage
        # event: vLLM names its build (system_fingerprint) with the finish then, as it would have
        self.held: dict[str, Any] | None = None

    def feed(self, data: bytes) -> bytes:
        """Complete upstream events in, bytes for the client out."""
        out: list[bytes] = []
        for payload in events(data):
            if payload == b"[DONE]":
                self.done = True
                if self.skip:
                    raise ResumeMismatch("the regenerated stream ended before reproducing what was sent")
                if self.held is not None:
                    out.append(encode_event(self.held))
                    self.held = None
                out.append(DONE_EVENT)
                continue
            doc = parse_event(payload)
            if doc is None:
                continue  # a malformed event of the continuation is dropped, as the hot path would relay it
            out.extend(self._event(doc))
        return b"".join(out)

    def _event(self, doc: dict[str, Any]) -> list[bytes]:
        if isinstance(doc.get("usage"), dict) and not doc.get("choices"):
            usage = self._usage(doc["usage"])
            self.st.usage = usage
            if not self.include_usage:
                held, self.held = self.held, None
                if held is None:
                    return []
                if doc.get("system_fingerprint") is not None:
                    held["system_fingerprint"] = doc["system_fingerprint"]
                return [encode_event(held)]
            frame = self._name(self._frame([], usage=usage))
            if doc.get("system_fingerprint") is not None:  # vLLM names its build with the usage
                frame["system_fingerprint"] = doc["system_fingerprint"]
            return [encode_event(frame)]
        out = []
        for choice in fields.choices(doc):
            if fields.index(choice) != 0:
                continue
            ev = self._choice(choice, doc.get("system_fingerprint"))
            if ev is not None:
                out.append(ev)
        return out

    def _choice(self, choice: dict[str, Any], fingerprint: Any = None) -> bytes | None:
        text = fields.content(choice)  # kinds checked (gateway/forward/fields.py)
        ids = fields.token_ids(choice.get("token_ids"))
        finish = fields.text(choice.get("finish_reason"))
        if self.skip:
            text, ids = self._skip(text, ids)
            if not text and not finish:
                return None
        if not text and not finish:
            return None  # e.g. the continuation's own role chunk
        self.st.add(text, ids, finish, choice.get("stop_reason"))
        frame = self._frame([self._client_choice(text, ids, finish, choice.get("stop_reason"))])
        if finish and not self.include_usage:  # the last chunk the client gets
            self._name(frame)
        if fingerprint is not None:  # vLLM names its build with the finish (without usage)
            frame["system_fingerprint"] = fingerprint
        elif finish and not self.include_usage:
            self.held = frame
            return None
        return encode_event(frame)

    def _name(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The final chunk names every model the answer came from (``infercdn.models``): the
        stream's ``model`` field and its ``x-infercdn-model`` header name the first one only."""
        if self.models is not None:
            frame["infercdn"] = {"models": list(self.models)}
        return frame

    def _skip(self, text: str, ids: list[int] | None) -> tuple[str, list[int] | None]:
        n = min(len(text), len(self.skip))
        if text[:n] != self.skip[:n]:
            raise ResumeMismatch("the regenerated stream differs from what the client already received")
        self.skip = self.skip[n:]
        if self.skip:
            return "", None
        return text[n:], (ids if n == 0 else None)

    def _usage(self, cont_usage: dict[str, Any]) -> dict[str, Any]:
        completion = (fields.whole(cont_usage.get("completion_tokens")) or 0) + self.base_generated
        prompt = self.st.prompt_tokens
        if prompt is None and self.st.prompt_ids is not None:
            prompt = len(self.st.prompt_ids)
        if prompt is None:  # text-level continuation: its prompt holds the text generated so far
            prompt = max(0, (fields.whole(cont_usage.get("prompt_tokens")) or 0) - self.base_generated)
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}

    def _client_choice(self, text: str, ids: list[int] | None, finish: str | None, stop_reason: Any) -> dict[str, Any]:
        if self.st.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if finish or self.st.kind != "chat":
            choice["stop_reason"] = stop_reason
        if self.st.kind != "chat":
            choice["prompt_token_ids"] = None  # vLLM sends both fields, null unless ids were asked for
        choice["token_ids"] = ids if self.keep_ids else None
        return choice

    def _frame(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.st.kind == "chat" else "text_completion"
        doc: dict[str, Any] = {"id": self.st.id, "object": obj, "created": self.st.created, "model": self.st.model,
                               "choices": choices}
        if usage is not None:
            doc["usage"] = usage
        return doc
