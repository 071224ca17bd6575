"""Which refusals may go to a model's fallbacks (issue 9, item 4)."""
from __future__ import annotations

import pytest

from gateway.forward.answers import may_fall_back
from gateway.forward.upstream import Refused

POLICY = b'{"error": {"message": "rejected", "code": "content_policy_violation"}}'
BAD = b'{"error": {"message": "temperature must be <= 2", "code": null}}'


@pytest.mark.parametrize(("status", "body", "opt_in", "expected"), [
    (400, POLICY, (), False),  # a content-policy refusal stays a refusal
    (400, POLICY, ("content_policy",), True),  # unless the model opts in
    (403, POLICY, (), False),
    (400, BAD, ("content_policy",), False),  # the request's fault: no opt-in reaches it
    (422, BAD, (), False),
    (413, BAD, (), False),
    (404, b'{"error": {"message": "The model `x` does not exist."}}', (), True),  # the pool's set-up
    (401, BAD, (), True),
])
def test_which_refusals_may_fall_back(status: int, body: bytes, opt_in: tuple[str, ...], expected: bool) -> None:
    assert may_fall_back(Refused(status, body, {}, None), opt_in) is expected
