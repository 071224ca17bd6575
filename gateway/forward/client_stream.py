"""Where an answer goes: the ``ClientStream`` seam between the stream session and the client.

Two implementations: :class:`gateway.forward.client_http.HttpStream` writes the events to the
client as they come (SSE over chunked HTTP), :class:`gateway.forward.assembled.AssembledAnswer`
collects them and answers one JSON object at the end (``models.<m>.non_stream: stream``).  The
session that relays, watches and resumes a stream is the same for both."""
from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from routing.plan import Candidate


class ClientGone(Exception):
    """The client went away (its transport is closing)."""


class ClientStream(Protocol):
    @property
    def committed(self) -> bool:
        """A 200 head is out: from now on a failure can only be told in-band."""

    async def keepalive(self, attempts: int) -> None:
        """Hold the client's idle timeout off while no token has come (``attempts`` so far)."""

    async def open(self, cand: Candidate, model: str | None, upstream_headers: dict[str, str]) -> bytes:
        """The answer starts (served by ``cand``): what to write before its first event."""

    async def write(self, data: bytes, last: bool = False) -> None:
        """Write events (the first write also sends the head); raises ClientGone.  ``last``:
        nothing follows, the answer's end may go out with them."""

    def push(self, data: bytes, last: bool = False) -> None:
        """Write events from the upstream's read callback (the hot path, no await), after the
        first ``write``; raises ClientGone, or UpstreamTooLarge for a collected answer over its
        bound.  ``last`` as for ``write``."""

    def backlog(self) -> int:
        """Bytes written but not yet taken by the client (flow control)."""

    def room(self) -> int | None:
        """For an answer collected to its end (nothing reaches the client before): how many
        more bytes it takes; None for a client the events are written to as they come."""

    def gone(self) -> bool:
        """Whether the client has left."""

    async def finish(self, cand: Candidate, usage: dict[str, Any] | None, status: str) -> web.StreamResponse:
        """The answer is complete (or, with ``status`` "stream_error", ended by an error event)."""

    async def give_up(self, cand: Candidate, message: str) -> web.StreamResponse:
        """The answer cannot be completed on any pool."""

    async def fail(self, message: str, type_: str, code: str | None) -> web.StreamResponse:
        """End a committed answer with ``message`` (a failure after the head was sent)."""
