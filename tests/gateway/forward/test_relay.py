"""The relay's two ways after the first token, on a real upstream connection (httptools) fed
by hand: an answer collected to its end reads its events once, at the end, bounded per read;
a relayed stream goes to its client read by read."""
from __future__ import annotations

import asyncio

import pytest

from gateway.forward.assembled import AssembledAnswer
from gateway.forward.relay import StreamTracker, Watchdog, pump
from gateway.forward.upstream import Ready, UpstreamConn, UpstreamLost, UpstreamPool
from tests.gateway.forward import fakes
from tests.gateway.forward.test_client_streams import FakeTransport, parts

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
DONE = b"data: [DONE]\n\n"


def event(i: int) -> bytes:
    return (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
            b'"delta":{"content":" t%d"},"finish_reason":null}]}\n\n' % i)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def first_token(conn: UpstreamConn) -> Ready:
    """The connection as the first-token race leaves it: the head and first event read, paused."""
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    transport = conn.transport
    transport.pause_reading = transport.resume_reading = transport.abort = lambda: None  # type: ignore[union-attr]
    conn.stream = True
    conn.data_received(HEAD + chunk(event(0)))
    assert conn.paused
    return Ready(conn, conn.take(), 0.01, {})


async def collect(reads: list[bytes], room: int = 1 << 20, max_event: int = 4096,
                  lost: bool = False) -> tuple[AssembledAnswer, StreamTracker, UpstreamLost | None]:
    """``reads`` through the pump to an assembled answer; ``lost``: then the connection breaks."""
    ex = fakes.exchange(stream=False)
    ledger, _, _ = parts()
    out = AssembledAnswer(ex, ledger, room)
    conn = UpstreamConn(UpstreamPool(1.0), ("http", "127.0.0.1", 9))
    ready = first_token(conn)
    tracker = StreamTracker(strip_ids=False, retain=True, max_event=max_event)
    task = asyncio.ensure_future(pump(out, ready, tracker, Watchdog(30.0, asyncio.get_running_loop().time() + 30)))
    await asyncio.sleep(0)  # the pump takes over the connection
    for data in reads:
        if not conn.closed:  # an exchange that failed aborts its connection: nothing more is read
            conn.data_received(data)
    if lost:
        conn.connection_lost(None)
    try:
        await task
        error = None
    except UpstreamLost as exc:
        error = exc
    return out, tracker, error


async def test_a_collected_answer_reads_its_events_once_at_the_end() -> None:
    events = [event(i) for i in range(1, 9)] + [DONE]
    reads = [chunk(e) for e in events]
    reads[3:5] = [reads[3][:7], reads[3][7:] + reads[4]]  # an event cut between two reads
    out, tracker, error = await collect(reads + [b"0\r\n\r\n"])
    assert error is None and tracker.done
    # the first token only: an answer that ended with [DONE] is taken whole, not event by event
    # (nor read by read); a resume would never read it
    assert tracker.fed == 1
    assert bytes(out.data) == bytes(tracker.raw) == event(0) + b"".join(events)


async def test_a_collected_answer_that_ends_without_done_is_read_once_at_its_end() -> None:
    """A body that ended early (no [DONE]): the tracker reads it once, to judge the ending."""
    out, tracker, error = await collect([chunk(event(1)), chunk(event(2)), b"0\r\n\r\n"])
    assert error is None and not tracker.done and tracker.fed == 2
    assert bytes(out.data) == bytes(tracker.raw) == event(0) + event(1) + event(2)


async def test_a_collected_answer_cut_mid_stream_leaves_the_tracker_what_arrived() -> None:
    """The state a resume continues from: every complete event that came before the break."""
    out, tracker, error = await collect([chunk(event(1)), chunk(event(2)[:20])], lost=True)
    assert error is not None and "closed the connection" in str(error) and not tracker.done
    assert bytes(tracker.raw) == event(0) + event(1) and tracker.fed == 2


@pytest.mark.parametrize("what", ["event", "answer"])
async def test_a_collected_answer_is_bounded_per_read(what: str) -> None:
    if what == "event":  # an event that never ends, in many reads: cut at max_event
        reads = [chunk(event(1)), chunk(b'data: {"choices":[{"delta":{"content":"')] + [chunk(b"a" * 1000)] * 6
        out, tracker, error = await collect(reads, max_event=4096)
        assert error is not None and "event over 4096 bytes" in str(error)
        assert bytes(tracker.raw) == event(0) + event(1)  # the complete events before it are kept
    else:  # well-formed events past the answer's bound
        reads = [chunk(event(i)) for i in range(1, 40)]
        out, tracker, error = await collect(reads, room=len(event(0)) + 2000)
        assert error is not None and "answer over" in str(error)
        assert out.data == bytearray()  # what it held is let go
