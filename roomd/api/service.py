"""What the server API needs of the rooms it steers: the `RoomService` protocol.

The API and the WebSocket daemon never import each other: the daemon's
`RoomControl` implements this protocol, and `roomd.node` hands it to the app.
A cluster node's implementation answers the same calls across nodes.
"""

from __future__ import annotations

from typing import Protocol

from roomd.core.event import Event
from roomd.core.room import Room
from roomd.core.stats import LiveCounts


class RoomService(Protocol):
    """The rooms of a node as the server API reads and changes them."""

    @property
    def draining(self) -> bool:
        """True once shutdown began (`/healthz` answers 503)."""
        ...

    async def room(self, room_id: str) -> Room | None:
        """Return the room `room_id` (with no members when nobody is in it), or None."""
        ...

    async def room_ids(self) -> list[str]:
        """Return the ids of every room, sorted."""
        ...

    def live_counts(self) -> LiveCounts:
        """Return how many connections, rooms and members there are now."""
        ...

    async def create_room(
        self, *, room_id: str | None, host: str | None, encrypted_room_key: bytes | None
    ) -> Room | None:
        """Create an empty room (a fresh id when `room_id` is None); None when it is taken.

        Raises `ProtocolError(tooManyRooms)` when the server holds `max_rooms`.
        """
        ...

    async def delete_room(self, room_id: str) -> None:
        """Delete a room; its members get `roomDeleted deleted`.

        Returns once the room is gone, or after a bounded wait (5 s) if its loop
        is slow to take the deletion.
        """
        ...

    async def kick(self, room_id: str, aid: str, *, ban: bool = False) -> None:
        """Remove every connection of `aid` from a room, as the host's `kick` does.

        With `ban`, `aid` may not join again until unbanned, even if it was absent.
        """
        ...

    async def unban(self, room_id: str, aid: str) -> None:
        """Let a banned `aid` join the room again."""
        ...

    async def history(self, room_id: str, before: int | None, limit: int) -> Event | None:
        """Return the room's `history` page (PROTOCOL.md section 8.3), or None if no room.

        The newest `limit` messages with `seq < before` (default: all), oldest
        first, blobs as bytes; `more` when older ones are kept.
        """
        ...
