"""The write path: from an event to bytes on every addressed socket.

Everything roomd sends to a client goes through this module, and it is the
whole path from "event" to "bytes on the socket":

0. `frame_of(codec, event)` encodes an event and frames it. A server frame is
   never masked (RFC 6455 section 5.1) and roomd negotiates no extensions, so
   the frame of one event is the same bytes for every member: `fan_out` builds
   it once per codec in use and puts those bytes into every member's outbox.
   wsproto builds frames too, but its public API takes text frames as `str`,
   which would cost a decode and an encode of every JSON event; `build_frame`
   frames the encoder's bytes directly (tested against wsproto's parser).
1. `Outbox.put(frame)` never blocks and never yields. It appends the frame to
   the outbox's pending list and marks the outbox dirty with the server-wide
   `Flusher`.
2. The `Flusher`, one task for the whole server, wakes once per scheduler turn
   in which anything was put, and flushes every dirty outbox: the frames that
   piled up for one connection during the turn (a burst of room events, a reply)
   become one write. This is the "batch what queues up for one socket into one
   write, once per event-loop turn" of the Node relay DESIGN.md measured.
3. A flush writes straight to the socket (`os.write` on its non-blocking file
   descriptor) when the connection has no backlog. Only what the kernel does
   not take at once (a slow or busy reader) goes to a writer task, started on
   demand in the server's connections nursery under its own cancel scope
   (`abort` cancels it), which awaits `send_all` and ends when the backlog is
   empty. Streams without a file descriptor (TLS, and the
   in-memory streams of the tests) always go through the writer task.

So an idle connection holds no writer task and no channel, a fan-out to N
members costs N list appends and, once per turn, one system call per member,
and no task switch per member.

Order: frames reach the socket in the order they were put. No-silent-loss:
`queued` counts frames put but not yet written; past `limit` the outbox calls
`on_close(4003)` (slow consumer) instead of growing, and a broken socket calls
`on_close(1006)`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs
import trio

from roomd.core.codec import Codec
from roomd.core.event import Event
from roomd.errors import CloseCode

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80


def build_frame(payload: bytes, *, text: bool) -> bytes:
    """Return one complete, unmasked data frame (FIN set) carrying `payload`."""
    first = _FIN | (OP_TEXT if text else OP_BINARY)
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def frame_of(codec: Codec, event: Event) -> bytes:
    """Return the WebSocket frame that carries `event` in `codec`."""
    return build_frame(codec.encode(event), text=codec.text)


def socket_fd(stream: trio.abc.Stream) -> int:
    """Return the file descriptor of a plain TCP stream, or -1 (TLS, memory streams)."""
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1


class Recipient(Protocol):
    """What `fan_out` needs of a connection: its codec and its outbox."""

    @property
    def codec(self) -> Codec:
        """The codec the connection negotiated."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Where the connection's frames queue."""
        ...


def fan_out(recipients: Iterable[Recipient], event: Event) -> None:
    """Put `event` into every recipient's outbox, encoding it once per codec."""
    frames: dict[Codec, bytes] = {}
    for recipient in recipients:
        frame = frames.get(recipient.codec)
        if frame is None:
            frame = frames[recipient.codec] = frame_of(recipient.codec, event)
        recipient.outbox.put(frame)


@attrs.define(eq=False)
class Flusher:
    """Flushes every dirty outbox once per scheduler turn, from one task."""

    _dirty: list[Outbox] = attrs.field(factory=list)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def mark(self, outbox: Outbox) -> None:
        """Flush `outbox` at the end of this turn (it has just received its first frame)."""
        if not self._dirty:
            self._lot.unpark_all()
        self._dirty.append(outbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush dirty outboxes until cancelled."""
        task_status.started()
        while True:
            if not self._dirty:
                await self._lot.park()
            dirty, self._dirty = self._dirty, []
            for outbox in dirty:
                outbox.flush()


@attrs.define(eq=False, slots=True)
class Outbox:
    """The outbound frames of one connection and how they reach its stream."""

    stream: trio.abc.Stream
    flusher: Flusher
    # Where a writer task runs when the socket refuses bytes.
    nursery: trio.Nursery
    limit: int
    # Called with 4003 when `limit` is passed, 1006 when the socket broke.
    on_close: Callable[[CloseCode], None]
    # The socket's file descriptor for direct writes, or -1 (TLS, memory streams).
    fd: int = -1
    pending: list[bytes] | None = None
    # Not None while a writer task owns the stream; frames then queue here.
    backlog: list[bytes] | None = None
    backlog_frames: int = 0
    queued: int = 0
    accepting: bool = True
    # A writer was cancelled halfway through a frame: nothing more may be written.
    torn: bool = False
    # `abort` was called: the connection is over and nothing more is written.
    aborted: bool = False
    _idle: trio.Event | None = None
    _writer_scope: trio.CancelScope | None = None

    @classmethod
    def for_stream(
        cls,
        stream: trio.abc.Stream,
        flusher: Flusher,
        nursery: trio.Nursery,
        *,
        limit: int,
        on_close: Callable[[CloseCode], None],
    ) -> Outbox:
        """Return the outbox of `stream`, writing directly to it when it is a TCP socket."""
        return cls(stream, flusher, nursery, limit, on_close, fd=socket_fd(stream))

    @property
    def is_idle(self) -> bool:
        """True when every frame put so far has been written (or dropped)."""
        return self.pending is None and self.backlog is None

    def put(self, frame: bytes) -> None:
        """Queue one frame; never blocks. Past `limit` unwritten frames, call `on_close(4003)`."""
        if not self.accepting:
            return
        self.queued += 1
        if self.queued > self.limit:
            self.accepting = False
            self.on_close(CloseCode.SLOW_CONSUMER)
            return
        if self.backlog is not None:
            self.backlog.append(frame)
            self.backlog_frames += 1
        elif self.pending is None:
            self.pending = [frame]
            self.flusher.mark(self)
        else:
            self.pending.append(frame)

    def stop(self, *, drain: bool) -> None:
        """Accept no more frames; unless `drain`, also drop what is not yet written."""
        self.accepting = False
        if not drain:
            self.pending = None
            if self.backlog is not None:
                self.backlog.clear()
            self._maybe_idle()

    def flush(self) -> None:
        """Write the pending frames (called by the flusher, once per turn)."""
        pending, self.pending = self.pending, None
        if not pending or self.torn:
            self._maybe_idle()
            return
        if self.backlog is not None:  # a writer owns the stream; it takes these next
            self.backlog.extend(pending)
            self.backlog_frames += len(pending)
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        if self.fd >= 0:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.torn = True
                self.on_close(CloseCode.ABNORMAL)
                self._maybe_idle()
                return
            if sent == len(data):
                self.queued -= len(pending)
                self._maybe_idle()
                return
            data = data[sent:]
        if self.aborted:  # the connection is over: nowhere to write
            self.torn = True
            self._maybe_idle()
            return
        # The kernel took only part (or the stream has no fd): a writer finishes the job.
        self.backlog = [data]
        self.backlog_frames = len(pending)
        self.nursery.start_soon(self._write)

    async def _write(self) -> None:
        with trio.CancelScope() as self._writer_scope:
            try:
                while self.backlog:
                    chunk = self.backlog[0] if len(self.backlog) == 1 else b"".join(self.backlog)
                    frames, self.backlog_frames = self.backlog_frames, 0
                    self.backlog.clear()
                    await self.stream.send_all(chunk)
                    self.queued -= frames
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.torn = True
                self.on_close(CloseCode.ABNORMAL)
            except BaseException:
                self.torn = True  # cancelled halfway through a write: the stream is unusable
                raise
            finally:
                self.backlog = None
                self._writer_scope = None
                self._maybe_idle()

    def abort(self) -> None:
        """Write nothing more: drop what is queued and cancel a writer still at work."""
        self.stop(drain=False)
        self.aborted = True
        if self._writer_scope is not None:
            self.torn = True
            self._writer_scope.cancel()

    def _maybe_idle(self) -> None:
        if self._idle is not None and self.is_idle:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once everything put has been written (or dropped)."""
        if self.is_idle:
            await trio.lowlevel.checkpoint()
            return
        self._idle = trio.Event()
        await self._idle.wait()
