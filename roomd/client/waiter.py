"""A request's life: its waiter, all that awaits roomd, and the delays between reconnects."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import attrs

from roomd.client.events import Event, NewMessage
from roomd.client.session import Frame

Match = Callable[[Event], bool]

# Frames sent without waiting for a reply, remembered by id so that an error answering
# one can name it; roomd answers within a round trip, so the newest few suffice.
FIRED_REMEMBERED = 64


@attrs.define
class Backoff:
    """Reconnect delays: `first`, doubling up to `longest`, each with up to 50% jitter."""

    first: float = 0.1
    longest: float = 5.0

    def delay(self, attempt: int) -> float:
        """Return how long to wait before reconnect attempt `attempt` (1, 2, ...)."""
        base = min(self.longest, self.first * 2 ** (attempt - 1))
        return float(base * (0.5 + random.random() / 2))


@attrs.define(eq=False)
class Waiter:
    """One request awaiting its direct reply, the event that shows it done, or an error."""

    match: Match | None
    public_key: bytes | None = None
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: Event | BaseException | None = None

    def rearm(self) -> None:
        self.done = anyio.Event()
        self.result = None

    def resolve(self, result: Event | BaseException) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()


@attrs.define
class Pending:
    """All that awaits roomd on one client: replies by request id, events by match,
    message echoes by `clientMsgId`, and the last frames sent without a waiter."""

    by_id: dict[int, Waiter] = attrs.field(factory=dict)
    matchers: list[Waiter] = attrs.field(factory=list)
    echoes: dict[str, Waiter] = attrs.field(factory=dict)
    fired: dict[int, Frame] = attrs.field(factory=dict)

    def expect_reply(self, request_id: int, waiter: Waiter) -> None:
        """Give the direct reply to the frame sent as `request_id` to `waiter`."""
        self.by_id[request_id] = waiter

    def remember_fired(self, frame: Frame) -> None:
        """Remember `frame` (with its `id`), sent with no waiter, so a refusal can name it.

        The newest `FIRED_REMEMBERED` such frames are remembered.
        """
        self.fired[frame["id"]] = frame
        if len(self.fired) > FIRED_REMEMBERED:
            del self.fired[next(iter(self.fired))]

    def reply_waiter(self, request_id: int | None) -> Waiter | None:
        """Return (and forget) the waiter of `request_id`'s direct reply, if any awaits it."""
        return None if request_id is None else self.by_id.pop(request_id, None)

    def fired_frame(self, request_id: int | None) -> Frame | None:
        """Return (and forget) the frame sent without a waiter as `request_id`, if remembered."""
        return None if request_id is None else self.fired.pop(request_id, None)

    def passed_on(self, event: Event, me: str | None) -> None:
        """Settle what `event`, passed on to the application, shows done."""
        if isinstance(event, NewMessage) and event.client_msg_id is not None:
            echo = self.echoes.get(event.client_msg_id)
            if echo is not None and event.sender == me:
                echo.resolve(event)
        for waiter in list(self.matchers):
            assert waiter.match is not None
            if waiter.match(event):
                waiter.resolve(event)

    def connection_lost(self, lost: BaseException) -> None:
        """Fail every request awaiting a reply on the lost connection with `lost`.

        A message is not lost with its connection: the rejoin settles it.
        """
        echoes = set(self.echoes.values())
        for waiter in self.by_id.values():
            if waiter not in echoes:
                waiter.resolve(lost)
        self.by_id.clear()
        self.fired.clear()

    def stopped(self, exc: BaseException) -> None:
        """Fail everything that awaits, messages included, with `exc`: no rejoin comes."""
        self.connection_lost(exc)
        for waiter in self.echoes.values():
            waiter.resolve(exc)
