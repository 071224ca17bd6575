"""``POST /tokenize`` and ``POST /detokenize`` in vLLM 0.32's shapes.

``/tokenize`` takes ``prompt`` (a string) or ``messages`` (rendered with the chat template, with
the generation prompt unless ``add_generation_prompt: false``) and answers ``{"count",
"max_model_len", "tokens", "token_strs"}`` (``token_strs`` null unless ``return_token_strs``).
``/detokenize`` takes ``tokens`` and answers ``{"prompt": text}``; ids outside the vocabulary are
skipped, as vLLM's tokenizer does (``[10**9]`` decodes to ``""``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.sim.config import SimConfig
from worker.sim.protocol import ApiError, check_model, flag, messages_of
from worker.sim.tokenizer import Tokenizer, render_chat


def tokenize(body: Mapping[str, Any], cfg: SimConfig, tok: Tokenizer) -> dict[str, Any]:
    check_model(body, cfg)
    if "messages" in body:
        add_gen = flag(body, "add_generation_prompt", True)
        cont = flag(body, "continue_final_message", False)
        text = render_chat(messages_of(body.get("messages")), add_generation_prompt=add_gen and not cont,
                           continue_final_message=cont)
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            raise ApiError(400, "prompt must be a string (or give messages).", param="prompt")
    ids = tok.encode(text)
    strs = [tok.texts[t] for t in ids] if flag(body, "return_token_strs", False) else None
    return {"count": len(ids), "max_model_len": cfg.max_model_len, "tokens": ids, "token_strs": strs}


def detokenize(body: Mapping[str, Any], cfg: SimConfig, tok: Tokenizer) -> dict[str, Any]:
    check_model(body, cfg)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise ApiError(400, "tokens must be a list of integers.", param="tokens")
    return {"prompt": tok.decode([t for t in tokens if tok.is_valid(t)])}
