"""Order of the real-vLLM tests (one vLLM server per run): the conformance table runs after the
others, just before the kill test.  After its requests (structured output, logprobs, the
Responses API, many cut replays), vLLM's API server on these 2 CPU cores was seen holding a
stream's output back until the generation ended (the first byte after ~2.2 s for 2,000 tokens,
where a fresh server sends it in ~10 ms), which leaves nothing for the disconnect test to abort.
Only this folder's block of the run is reordered (hooks in this file see every collected test;
later folders may stop the shared server)."""
from __future__ import annotations

import pytest

_LATE = {"test_conformance.py": 1, "test_zz_kill.py": 2}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = [i for i, item in enumerate(items) if item.path.parent.name == "e2e_vllm"]
    if here:
        first, last = here[0], here[-1] + 1  # collected together: one contiguous block
        items[first:last] = sorted(items[first:last], key=lambda item: _LATE.get(item.path.name, 0))
