"""The fields of a pool's event (a chunk of a chat or completions stream) read with their kinds
checked: a value of another kind reads as absent.  What comes from the wire meets typed state
here and nowhere else (compiled, binding a value to a name of another type raises; as Python, a
number where a dict is expected raised as well, later)."""
from __future__ import annotations

from typing import Any


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def token_ids(value: Any) -> list[int] | None:
    """A list of token ids (ints), or None."""
    if not isinstance(value, list):
        return None
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            return None
    return value


def choices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The event's choices that are objects (none where ``choices`` is not a list)."""
    found = doc.get("choices")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, dict)]


def index(choice: dict[str, Any]) -> int:
    """The choice's index (0 when absent, as vLLM's first choice; -1 when not a whole number)."""
    found = whole(choice.get("index", 0))
    return -1 if found is None else found


def delta(choice: dict[str, Any]) -> dict[str, Any] | None:
    found = choice.get("delta")
    return found if isinstance(found, dict) else None


def content(choice: dict[str, Any]) -> str:
    """The text the choice adds: a chat delta's ``content``, a completion's ``text`` ("" if none)."""
    if "delta" in choice:
        found = delta(choice)
        value = found.get("content") if found is not None else None
    else:
        value = choice.get("text")
    return value if isinstance(value, str) else ""
