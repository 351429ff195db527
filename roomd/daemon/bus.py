"""The event bus: how a change made outside a room's connections reaches the room.

The server API publishes `Kick`, `Unban` and `Delete`; every node's pump (`EventBus.run`)
hands each event to that node's `on_event` callback, which puts it into the
live room's inbox as a command, so it is ordered with the room's other events.
`LocalEventBus` is the one-process implementation; a cluster backend (Redis
pub/sub) implements the same `EventBus` protocol and delivers on every node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio


@attrs.frozen
class Delete:
    """Delete a room; its members get `roomDeleted {reason}`."""

    room_id: str
    reason: str = "deleted"


@attrs.frozen
class Kick:
    """Remove every connection of `aid` from a room, as the host's `kick` does.

    With `ban`, `aid` is banned too, even when it is not in the room.
    """

    room_id: str
    aid: str
    ban: bool = False


@attrs.frozen
class Unban:
    """Let a banned `aid` join the room again."""

    room_id: str
    aid: str


BusEvent = Delete | Kick | Unban
EventHandler = Callable[[BusEvent], Awaitable[None]]


class EventBus(Protocol):
    """Carries `BusEvent`s from publishers to every node's rooms."""

    async def publish(self, event: BusEvent) -> None:
        """Send `event` to every node; returns once the bus has accepted it."""
        ...

    async def run(
        self,
        on_event: EventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `on_event` with every event published anywhere, in order, until cancelled."""
        ...


class LocalEventBus:
    """An event bus inside one process: a bounded memory channel."""

    def __init__(self, capacity: int = 1024) -> None:
        self._send, self._recv = trio.open_memory_channel[BusEvent](capacity)

    async def publish(self, event: BusEvent) -> None:
        """Queue `event` for this process's pump (waits while the channel is full)."""
        await self._send.send(event)

    async def run(
        self,
        on_event: EventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `on_event` with every published event, in order, until cancelled."""
        task_status.started()
        async for event in self._recv:
            await on_event(event)
