"""What the server API may do to the cluster's rooms (the API's `RoomService`, with --cluster).

Every node's API steers every room: reads come from Redis, and changes are
the same `roomd` function calls a host's `kick` or `deleteChatroom` makes, so
they reach every member on every node, ordered with the room's other events
(CLUSTER.md guarantee 4). When Redis does not answer in time, the request
fails with `unavailable` (HTTP 503).
"""

from __future__ import annotations

import secrets

import attrs
import trio

from roomd.cluster import ops
from roomd.core import message as m
from roomd.core.admission import Admission
from roomd.core.event import Event
from roomd.core.room import Member, Room
from roomd.core.stats import LiveCounts
from roomd.daemon.cluster_rooms import ClusterRooms
from roomd.daemon.redis_link import REDIS_FAILED, unavailable
from roomd.daemon.registry import new_epoch, new_room_id
from roomd.daemon.session import Sessions
from roomd.errors import ApiError


def _unavailable() -> ApiError:
    error = unavailable()
    return ApiError(error.code, error.message)


@attrs.define(eq=False)
class ClusterControl:
    """The cluster's rooms as one node's server API sees them."""

    cluster: ClusterRooms
    admission: Admission
    sessions: Sessions

    @property
    def draining(self) -> bool:
        """True once shutdown began: the node takes no new connections."""
        return self.admission.draining

    async def room(self, room_id: str) -> Room | None:
        """Return room `room_id` as Redis holds it now, or None."""
        redis = self.cluster.link_of(room_id).redis
        key = ops.room_key(room_id)
        try:
            with trio.fail_after(self.cluster.config.cluster_timeout):
                state = await redis.hgetall(key)
                if not state:
                    return None
                order = await redis.zrange(f"{key}:members", 0, -1)
                keys = await redis.hgetall(f"{key}:pk")
                bans = await redis.smembers(f"{key}:bans")
        except REDIS_FAILED:
            raise _unavailable() from None
        config = self.cluster.config
        empty = state.get(b"empty")
        room = Room(
            room_id=room_id,
            host=ops.text(state.get(b"host", b"")) or None,
            encrypted_room_key=state.get(b"key") or None,
            created_at=int(state[b"created"]),
            max_members=config.max_members,
            message_id_prefix=ops.text(state[b"prefix"]),
            epoch=ops.text(state[b"epoch"]),
            history=config.history_policy(),
            key_epoch=int(state[b"keyEpoch"]),
            bans=frozenset(ops.text(aid) for aid in bans),
            empty_since=None if empty is None else int(empty),
            seq=int(state[b"seq"]),
        )
        for raw in order:
            aid = ops.text(raw)
            room.members[aid] = Member(aid, ops.unpack(keys[raw]), [])
        return room

    async def room_ids(self) -> list[str]:
        """Return the ids of every room of the cluster (over every Redis), sorted."""
        ids: list[str] = []
        try:
            with trio.fail_after(self.cluster.config.cluster_timeout):
                for link in self.cluster.links:
                    ids += [ops.text(raw) for raw in await link.redis.zrange("roomd:rooms", 0, -1)]
        except REDIS_FAILED:
            raise _unavailable() from None
        return sorted(ids)

    def live_counts(self) -> LiveCounts:
        """Return this node's open connections, rooms it has members in, AIDs, subscriptions."""
        rooms = self.cluster.rooms.values()
        members = sum(len(set(room.aids.values())) for room in rooms)
        return LiveCounts(
            len(self.sessions.open),
            len(self.cluster.rooms),
            members,
            self.cluster.subscription_count,
        )

    async def create_room(
        self, *, room_id: str | None, host: str | None, encrypted_room_key: bytes | None
    ) -> Room | None:
        """Create an empty room; None when `room_id` is taken. Raises past `max_rooms`."""
        config = self.cluster.config
        room_id = room_id or new_room_id()
        try:
            elsewhere = await self.cluster.counted_elsewhere(room_id, None)
        except REDIS_FAILED:
            raise _unavailable() from None
        call = ops.create(
            room_id,
            self.cluster.op(),
            host=host,
            encrypted_room_key=encrypted_room_key,
            epoch=new_epoch(),
            prefix=secrets.token_urlsafe(16),
            max_rooms=config.max_rooms,
            max_rooms_per_aid=config.max_rooms_per_aid,
            by_api=True,
            elsewhere=elsewhere,
        )
        reply = await self._call(call)
        if isinstance(reply, ops.Exists):
            return None
        return await self.room(room_id)

    async def delete_room(self, room_id: str) -> None:
        """Delete a room on every node; returns once Redis applied it."""
        await self._call(ops.delete(room_id, self.cluster.op(), conn="", reason="deleted"))

    async def kick(self, room_id: str, aid: str, *, ban: bool = False) -> None:
        """Remove every connection of `aid` from a room, on every node (banning it with `ban`)."""
        await self._call(ops.kick(room_id, self.cluster.op(), conn="", aid=aid, ban=ban))

    async def unban(self, room_id: str, aid: str) -> None:
        """Let a banned `aid` join the room again."""
        await self._call(ops.unban(room_id, self.cluster.op(), conn="", aid=aid))

    async def history(self, room_id: str, before: int | None, limit: int) -> Event | None:
        """Return the `history` page of room `room_id` (PROTOCOL.md 8.3), or None if no room."""
        room = await self.room(room_id)
        if room is None:
            return None
        page = m.GetHistory(room_id=room_id, before=before, limit=limit)
        try:
            return await self.cluster.history_page(
                room_id, room.epoch, room.message_id_prefix, page
            )
        except REDIS_FAILED:
            raise _unavailable() from None

    async def _call(self, call: ops.Call) -> ops.Reply:
        reply = await self.cluster.call(call)
        if isinstance(reply, ops.Refused):
            raise ApiError(reply.error.code, reply.error.message)
        if isinstance(reply, ops.Late):
            raise _unavailable()
        return reply
