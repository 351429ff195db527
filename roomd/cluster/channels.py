"""Room channels: one sharded pub/sub subscription per room a node has members in.

Redis 7's sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`) works on a single Redis
too, and a channel's messages go only to the nodes subscribed to it, so a
node receives a room's traffic only while it has members there (CLUSTER.md
guarantee 9). coredis 6.9 offers sharded pub/sub only on its cluster client;
`ShardedPubSub` is its standalone `PubSub` speaking the sharded commands,
which Redis answers with the same replies (`ssubscribe`, `smessage`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from anyio import Event
from coredis.commands.constants import CommandName
from coredis.exceptions import ConnectionError
from coredis.patterns.pubsub import PubSub
from coredis.typing import StringT

# (channel, data) of one channel message.
OnMessage = Callable[[bytes, bytes], None]


class ShardedPubSub(PubSub[Any]):
    """A standalone coredis `PubSub` whose channels are sharded ones.

    Channel messages go to `on_message` as they are read, rather than through
    `get_message` (which still yields the (un)subscription confirmations).
    """

    def __init__(self, *args: Any, on_message: OnMessage, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_message = on_message

    async def _consume_push_messages(self) -> None:
        # coredis hands each push message to one more task (`get_message`'s
        # stream): on every room event of a busy node, that wake is a hop of
        # latency and CPU. Channel messages skip it.
        async for response in self.connection.push_messages:
            self._last_checkin = time.monotonic()
            if response[0] == b"smessage":
                _, channel, data = response
                assert isinstance(channel, bytes) and isinstance(data, bytes)
                self.on_message(channel, data)
                continue
            self._send_stream.send_nowait(await self._handle_message(response))

    async def subscribe(self, *channels: StringT, **handlers: Any) -> None:
        """Subscribe to `channels` (`SSUBSCRIBE`); return once Redis confirmed each."""
        names = [self._encode(channel) for channel in channels]
        waiters = {name: self._waiter(name) for name in names}
        for name in names:
            self._execute_command(CommandName.SSUBSCRIBE, name)
        await self._ensure_subscribed(waiters)
        self.channels.update(dict.fromkeys(names))

    async def unsubscribe(self, *channels: StringT) -> None:
        """Unsubscribe from `channels` (`SUNSUBSCRIBE`); all of them when none are named."""
        names = [self._encode(channel) for channel in (channels or list(self.channels))]
        if not names:
            return
        waiters = {name: self._unwaiter(name) for name in names}
        try:
            self._unsubscribe(*names)
        except ConnectionError:
            # No connection, so no subscription: just never subscribe again on reconnect.
            for name in names:
                self.channels.pop(name, None)
                self._unsubscription_waiters.pop(name, None)
            return
        await self._ensure_unsubscribed(waiters)

    def _unsubscribe(self, *channels: StringT) -> None:
        for name in channels or list(self.channels):
            self._execute_command(CommandName.SUNSUBSCRIBE, name)

    def _punsubscribe(self, *patterns: StringT) -> None:
        return  # a sharded subscriber has no patterns

    def _waiter(self, name: StringT) -> Event:
        event = Event()
        self._subscription_waiters[name].append(event)
        return event

    def _unwaiter(self, name: StringT) -> Event:
        event = Event()
        self._unsubscription_waiters[name].append(event)
        return event
