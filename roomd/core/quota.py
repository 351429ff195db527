"""Room quotas (PROTOCOL.md 1.1 §5, Limits): rooms per server and rooms per hosting AID.

An AID may host at most `max_rooms_per_aid` rooms, counted across all its
connections; an empty room counts for its last host, so creating and leaving
rooms does not escape the limit, and a host transfer, a deletion or an expiry
frees the place. At most `max_rooms` rooms exist. 0 means no limit. The shell
(the room registry) reserves a place before it creates a room, and reports
every host change and every room that ends.
"""

from __future__ import annotations

from collections import Counter

import attrs

from roomd.errors import ErrorCode, ProtocolError


@attrs.define
class RoomQuota:
    """How many rooms exist and how many each AID hosts, against their limits."""

    max_rooms: int = 0
    max_rooms_per_aid: int = 0
    rooms: int = 0
    hosted: Counter[str] = attrs.field(factory=Counter)

    def reserve(self, host: str | None, *, per_aid: bool = True) -> None:
        """Count one more room hosted by `host`; raise `tooManyRooms` (counting nothing) if full.

        With `per_aid` False (a room the server API creates, or one restored at
        start) only `max_rooms` is enforced; the room still counts for its host.
        """
        if self.max_rooms and self.rooms >= self.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS, f"this server holds its limit of {self.max_rooms} rooms"
            )
        limit = self.max_rooms_per_aid
        if per_aid and host is not None and limit and self.hosted[host] >= limit:
            raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, f"'{host}' already hosts {limit} rooms")
        self.rooms += 1
        if host is not None:
            self.hosted[host] += 1

    def release(self, host: str | None) -> None:
        """Forget one room hosted by `host`: it was deleted, it expired, or it was never made."""
        self.rooms -= 1
        self._uncount(host)

    def host_changed(self, old: str | None, new: str | None) -> None:
        """Move one room from `old` host to `new` (either may be None)."""
        if old == new:
            return
        self._uncount(old)
        if new is not None:
            self.hosted[new] += 1

    def _uncount(self, host: str | None) -> None:
        if host is None:
            return
        left = self.hosted[host] - 1
        if left > 0:
            self.hosted[host] = left
        else:
            del self.hosted[host]
