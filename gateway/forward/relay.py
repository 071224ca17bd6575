"""After the first token: relay the stream, watch it, and resume it elsewhere if it breaks.

The hot path (``StreamTracker.feed``) cuts complete events, drops malformed ones, sets the
token ids the gateway asked for back to the nulls vLLM sends unasked, and keeps the raw bytes
it relayed (for a resume): byte searches only, no JSON.  A watchdog timer (re-armed per stall
period, not per token) ends a silent stream or one past its total deadline."""
from __future__ import annotations

import asyncio
import re

from gateway.forward.client_stream import ClientGone, ClientStream
from gateway.forward.splice import Splicer
from gateway.forward.upstream import Ready, UpstreamConn, UpstreamTooLarge
from gateway.sse import DONE_EVENT, null_token_ids
from routing.deadlines import GapMeter

DEFAULT_MAX_EVENT = 4 * 1024 * 1024
DEFAULT_RETAINED = 4 * 1024 * 1024  # beyond this a stream can no longer be resumed (memory bound)
RESERVE_BLOCK = 64 * 1024
_RESPONSE_ENDS = (b"event: response.completed\n", b"event: response.incomplete\n", b"event: response.failed\n")
_WELL_FORMED = re.compile(rb"(?:data: \{[^\n]*\}\n\n)+").fullmatch  # JSON data events only


class ByteBudget:
    """Bytes held by all streams of a gateway for a resume, within a limit given per call
    (``upstream_limits.resume_buffer_total_bytes``, which a reload may change)."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, n: int, limit: int) -> bool:
        if self.used + n > limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Pending:
    """The incomplete tail of a stream, bounded by ``max_event`` bytes; kept as parts (joined
    once an event ends) so an event arriving in many reads costs linear time, not quadratic."""

    __slots__ = ("parts", "size", "max_event", "error")

    def __init__(self, max_event: int) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.max_event = max_event
        self.error: UpstreamTooLarge | None = None  # raised by the pump once what came before is relayed

    def join(self, chunk: bytes) -> bytes | None:
        """``chunk`` with the tail before it when an event may end in it; else None (kept)."""
        if not self.parts:
            return chunk
        if b"\n\n" not in chunk and not (chunk[:1] == b"\n" and self.parts[-1][-1:] == b"\n"):
            self.keep(chunk)
            return None
        out = b"".join((*self.parts, chunk))
        self.parts.clear()
        self.size = 0
        return out

    def keep(self, rest: bytes) -> None:
        if self.error is not None:
            return
        self.size += len(rest)
        if self.size > self.max_event:
            self.parts.clear()
            self.error = UpstreamTooLarge(f"an upstream event over {self.max_event} bytes")
            return
        self.parts.append(rest)


class StreamTracker:
    def __init__(self, strip_ids: bool, retain: bool, max_event: int = DEFAULT_MAX_EVENT,
                 max_retained: int = DEFAULT_RETAINED, budget: ByteBudget | None = None,
                 budget_limit: int = 0) -> None:
        self.strip_ids = strip_ids
        self.retain = retain
        self.pending = Pending(max_event)
        self.raw = bytearray()
        self.max_retained = max_retained
        self.budget = budget  # None: only the per-stream bound
        self.budget_limit = budget_limit
        self.reserved = 0  # bytes taken from the budget (retained bytes fit in them)
        self.done = False
        self.dropped = 0  # malformed events removed
        self.raw_events = False  # the first event (with the prompt's ids) is behind us
        self.fed = 0  # reads this tracker was fed (an answer collected to its end: once, at its end)

    @property
    def error(self) -> UpstreamTooLarge | None:
        return self.pending.error

    def feed(self, chunk: bytes) -> bytes:
        # complete events out, the incomplete tail kept: this runs once per upstream read
        self.fed += 1
        if self.pending.parts:
            joined = self.pending.join(chunk)
            if joined is None:
                return b""
            chunk = joined
        cut = chunk.rfind(b"\n\n") + 2
        if cut < 2:
            self.pending.keep(chunk)
            return b""
        if cut != len(chunk):
            self.pending.keep(chunk[cut:])
            chunk = chunk[:cut]
        single = chunk.endswith(b"}\n\n") and chunk.find(b"\n\n") == cut - 2 and chunk.startswith(b"data: {")
        if not single and _WELL_FORMED(chunk) is None:
            if chunk.endswith(DONE_EVENT) and (cut == len(DONE_EVENT) or _WELL_FORMED(chunk, 0, cut - len(DONE_EVENT))):
                self.done = True  # the last read: well-formed events, then [DONE]
            else:
                chunk = self._sanitize(chunk)  # comments, named events or a malformed event
        if self.retain:
            self._keep(chunk)
        if not self.strip_ids:
            return chunk
        if single and self.raw_events and b"prompt_token_ids" not in chunk:
            # one event after the first: its only id field is choice 0's "token_ids", near the end
            at = chunk.rfind(b',"token_ids":[')
            if at >= 0:
                return chunk[:at + 13] + b"null" + chunk[chunk.index(b"]", at) + 1:]
        prompt, self.raw_events = not self.raw_events, True
        return null_token_ids(chunk, prompt)

    def whole(self, events: bytearray) -> bool:
        """Take the rest of a collected answer that ended with [DONE] as it came (its reader,
        the assembler, parses the events it needs and skips the rest; no resume will read it:
        it is not checked event by event).  False (nothing taken) for any other ending."""
        if self.pending.parts or not (events.endswith(b"\n\n" + DONE_EVENT) or events == DONE_EVENT):
            return False
        if self.retain:
            self._keep(events)  # what is retained of the stream serves its usage and event count
        self.done = True
        return True

    def _keep(self, data: bytes | bytearray) -> None:
        """Retain ``data`` for a resume, within the stream's bound and the gateway's budget."""
        if len(self.raw) + len(data) > self.reserved:
            self._reserve(len(data))
        if self.retain:
            self.raw += data

    def _reserve(self, n: int) -> None:
        """Room for ``n`` more retained bytes, taken from the budget a block at a time."""
        need = len(self.raw) + n
        block = min(max(need - self.reserved, RESERVE_BLOCK), self.max_retained - self.reserved)
        if need > self.max_retained or (self.budget is not None and not self.budget.take(block, self.budget_limit)):
            self.retain = False  # too much to keep: this stream can no longer be resumed
            self.free()
            return
        self.reserved += block

    def free(self) -> None:
        """Give the retained bytes back (at the end of the stream, whatever ended it)."""
        if self.budget is not None:
            self.budget.give(self.reserved)
        self.reserved = 0
        self.raw = bytearray()

    def _sanitize(self, data: bytes) -> bytes:
        """Keep well-formed events (JSON objects, [DONE], comments, named events as the
        Responses API sends them); note the end of stream ([DONE], or a Responses API stream's
        last event: it sends no [DONE])."""
        kept = []
        for block in data.split(b"\n\n")[:-1]:
            if block == b"data: [DONE]":
                self.done = True
            elif block.startswith(b"data: {") and block.endswith(b"}") or block.startswith(b":"):
                pass
            elif block.startswith(b"event: ") and b"\ndata: {" in block and block.endswith(b"}"):
                if block.startswith(_RESPONSE_ENDS):
                    self.done = True
            elif block:
                self.dropped += 1
                continue
            kept.append(block + b"\n\n")
        return b"".join(kept)


class Watchdog:
    """Cancels the current task when the stream has been silent for ``stall_s`` or the
    request's deadline has passed; ``fired`` says which."""

    def __init__(self, stall_s: float, deadline: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.stall_s = stall_s
        self.deadline = deadline
        self.last = self.loop.time()
        self.fired: str | None = None
        self.handle = self.loop.call_at(min(self.last + stall_s, deadline), self._check)

    def _check(self) -> None:
        now = self.loop.time()
        if now >= self.deadline:
            self.fired = "deadline"
        elif now >= self.last + self.stall_s:
            self.fired = "stall"
        else:
            self.handle = self.loop.call_at(min(self.last + self.stall_s, self.deadline), self._check)
            return
        assert self.task is not None
        self.task.cancel()

    def stop(self) -> None:
        self.handle.cancel()

    def owns(self, exc: asyncio.CancelledError) -> bool:
        """True when ``exc`` is this watchdog's cancellation (then it is absorbed)."""
        if self.fired is None or self.task is None:
            return False
        self.task.uncancel()
        return True


class SpliceFeed:
    """Feeds complete events of a continuation to a Splicer (same interface as the tracker)."""

    def __init__(self, splicer: Splicer, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self.splicer = splicer
        self.pending = Pending(max_event)

    @property
    def done(self) -> bool:
        return self.splicer.done

    @property
    def error(self) -> UpstreamTooLarge | None:
        return self.pending.error

    def feed(self, chunk: bytes) -> bytes:
        joined = self.pending.join(chunk)
        if joined is None:
            return b""
        cut = joined.rfind(b"\n\n") + 2
        if cut != len(joined):
            self.pending.keep(joined[cut:] if cut >= 2 else joined)
        complete = joined[:cut] if cut >= 2 else b""
        return self.splicer.feed(complete) if complete else b""


HIGH_WATER = 256 * 1024  # client write buffer above which upstream reads pause
LOW_WATER = 64 * 1024


class _Drained:
    """Resumes the upstream's reads once the client's backlog is low again (polled).  An object,
    not a closure that re-arms itself: that closure is a reference cycle holding the stream."""

    __slots__ = ("out", "conn", "watchdog")

    def __init__(self, out: ClientStream, conn: UpstreamConn, watchdog: Watchdog) -> None:
        self.out, self.conn, self.watchdog = out, conn, watchdog

    def __call__(self) -> None:
        wd = self.watchdog
        wd.last = wd.loop.time()  # a slow client is not a silent upstream
        if self.conn.closed or self.out.gone():
            return
        if self.out.backlog() <= LOW_WATER:
            self.conn.transport.resume_reading()  # type: ignore[union-attr]
        else:
            wd.loop.call_later(0.005, self)


async def pump(out: ClientStream, ready: Ready, feeder: StreamTracker | SpliceFeed, watchdog: Watchdog,
               prefix: bytes = b"", meter: GapMeter | None = None) -> None:
    """Relay ``ready``'s body through ``feeder`` to ``out`` until [DONE] or the body ends.

    After the first write (which also sends the response head), bytes go from the upstream's
    ``data_received`` straight to ``out.push`` with no coroutine switch per token; upstream
    reads pause while the client's backlog is high.  ``prefix`` (a comment) goes out in the
    first write.  ``meter`` is ticked once per upstream read."""
    meter = meter if meter is not None else GapMeter()
    meter.tick(watchdog.loop.time())
    first = prefix + feeder.feed(ready.first) or b": \n\n"
    await out.write(first, last=feeder.done and feeder.error is None)  # a whole answer in the first read
    if feeder.error is not None:
        raise feeder.error
    if feeder.done:
        return
    if out.gone():
        raise ClientGone()
    room = out.room()
    if room is not None and isinstance(feeder, StreamTracker):
        await _collect(out, ready, feeder, watchdog, meter, room)
        return
    conn = ready.conn
    loop_time = watchdog.loop.time
    feed = feeder.feed
    push = out.push
    backlog = out.backlog
    tick = meter.tick
    pending = feeder.pending  # its error read per read as an attribute, not the feeder's property

    def sink(chunk: bytes) -> None:
        watchdog.last = now = loop_time()
        tick(now)
        data = feed(chunk)
        if data:
            push(data, feeder.done and pending.error is None)
            if backlog() > HIGH_WATER:
                conn.transport.pause_reading()  # type: ignore[union-attr]
                watchdog.loop.call_later(0.005, _Drained(out, conn, watchdog))
        if pending.error is not None:
            raise pending.error  # after the complete events before it went out
        if feeder.done:
            conn.finish()

    await ready.pump(sink)


async def _collect(out: ClientStream, ready: Ready, tracker: StreamTracker, watchdog: Watchdog, meter: GapMeter,
                   room: int) -> None:
    """``pump`` for an answer collected to its end (nothing reaches the client before it): a
    read is only timed, kept and bounded (``room`` bytes in all, ``max_event`` for an event
    that has not ended); the tracker reads the events once, when the body ends or breaks (a
    resume goes on from what arrived).  The per-read work of a relayed stream is for its client."""
    conn = ready.conn
    loop_time = watchdog.loop.time
    tick = meter.tick
    body = bytearray()
    extend = body.extend
    max_event = tracker.pending.max_event + 2

    def sink(chunk: bytes) -> None:
        watchdog.last = now = loop_time()
        tick(now)
        extend(chunk)
        size = len(body)
        if size > room:
            out.push(bytes(body))  # past the answer's bound: refused (UpstreamTooLarge), what it held let go
        if size - body.rfind(b"\n\n") > max_event:
            raise UpstreamTooLarge(f"an upstream event over {max_event - 2} bytes")
        if body.endswith(DONE_EVENT):
            conn.finish()

    try:
        await ready.pump(sink)
    except BaseException:
        data = tracker.feed(bytes(body)) if body else b""  # what a resume goes on from
        if data and len(body) <= room:
            out.push(data)
        raise
    if not tracker.strip_ids and tracker.whole(body):
        out.push(bytes(body), True)
        return
    data = tracker.feed(bytes(body)) if body else b""
    if data:
        out.push(data, tracker.done)
    if tracker.error is not None:
        raise tracker.error
