"""The client's memory of its rooms across connections: the sans-I/O half of reconnection.

Theory of operation. A `ClientSession` outlives every WebSocket connection the
client makes. For each room it is in, it remembers the stream position
`(epoch, seq)` of the last message it passed on, and the messages it sent that
the room has not echoed yet. The I/O shell feeds it every server event with
`receive` and passes on only what `receive` returns, so:

- a `newMessage` at or below the remembered `seq` (a repeat) is dropped, and the
  application sees every `seq` once and in order;
- after a reconnect, `rejoin_frames` gives one `joinChatroom` with `since` per
  room; a `joinSuccess` with `recovered: false` is followed by a `Gap`;
- when a rejoined room's replay is complete (its `seq` reached the
  `joinSuccess`'s `lastSeq`), `receive` reports the room ready, and
  `unechoed(room_id)` lists the messages the shell must send again: they
  were sent before the drop and the room's replay did not hold them, so roomd
  never ordered them. After a `Gap` (no replay) that is not certain: a message
  roomd ordered before it lost or trimmed its history is sent again.
"""

from __future__ import annotations

from typing import Any

import attrs

from roomd.client.events import Event, Gap, Joined, LeftRoom, NewMessage, RoomDeleted

Frame = dict[str, Any]


@attrs.define
class RoomPosition:
    """Where this client is in one room's stream, and what it sent that is not echoed yet."""

    epoch: str
    seq: int
    public_key: bytes | None
    # clientMsgId -> the message frame, for messages the room has not echoed.
    unechoed: dict[str, Frame] = attrs.field(factory=dict)
    # While rejoining: the lastSeq the replay runs to; None when live.
    replay_until: int | None = None


@attrs.define
class Received:
    """What `ClientSession.receive` decided about one event."""

    events: list[Event]
    # Rooms whose rejoin finished with this event: the shell resends their unechoed messages.
    ready: list[str]


@attrs.define
class ClientSession:
    """Every room this client is in, its stream position, and its unechoed messages."""

    aid: str | None = None
    rooms: dict[str, RoomPosition] = attrs.field(factory=dict)
    _rejoining: set[str] = attrs.field(factory=set)

    def sent_message(self, frame: Frame) -> None:
        """Record a `message` frame (with a `clientMsgId`) until its room echoes it."""
        position = self.rooms.get(frame["roomId"])
        if position is not None:
            position.unechoed[frame["clientMsgId"]] = frame

    def forget_message(self, room_id: str, client_msg_id: str) -> None:
        """Stop resending a message (roomd refused it, or the caller gave up)."""
        position = self.rooms.get(room_id)
        if position is not None:
            position.unechoed.pop(client_msg_id, None)

    def rejoin_frames(self) -> list[Frame]:
        """Return the `joinChatroom` frames that put a new connection back in every room.

        Each carries `since` (the last position passed on), so roomd replays
        what was missed. Call once per new connection, after `authOk`.
        """
        frames = []
        for room_id, position in self.rooms.items():
            frame: Frame = {
                "type": "joinChatroom",
                "roomId": room_id,
                "since": {"epoch": position.epoch, "seq": position.seq},
            }
            if position.public_key is not None:
                frame["publicKey"] = position.public_key
            frames.append(frame)
            self._rejoining.add(room_id)
        return frames

    def rejoin_failed(self, room_id: str) -> None:
        """Forget a room roomd refused to rejoin (deleted, banned, full)."""
        self._rejoining.discard(room_id)
        self.rooms.pop(room_id, None)

    def replaying(self) -> bool:
        """Return whether a rejoin is still waiting for a room's join reply or replay."""
        return bool(self._rejoining) or any(p.replay_until is not None for p in self.rooms.values())

    def unechoed(self, room_id: str) -> list[Frame]:
        """Return the messages of `room_id` sent but never ordered by roomd, oldest first."""
        position = self.rooms.get(room_id)
        return [] if position is None else list(position.unechoed.values())

    def receive(self, event: Event, public_key: bytes | None = None) -> Received:
        """Return what of `event` the application sees, and which rooms became ready.

        `public_key` is the one this client joins with, remembered for rejoins
        when `event` is a `joinSuccess` of a room it was not in yet.
        """
        match event:
            case NewMessage(room_id=room_id, seq=seq):
                return self._message(event, room_id, seq)
            case Joined():
                return self._joined(event, public_key)
            case LeftRoom(room_id=room_id) | RoomDeleted(room_id=room_id):
                self.rooms.pop(room_id, None)
                self._rejoining.discard(room_id)
        return Received([event], [])

    def _message(self, event: NewMessage, room_id: str, seq: int) -> Received:
        position = self.rooms.get(room_id)
        if position is None:
            return Received([event], [])
        if seq <= position.seq:
            return Received([], [])
        position.seq = seq
        if event.sender == self.aid and event.client_msg_id is not None:
            position.unechoed.pop(event.client_msg_id, None)
        ready = []
        if position.replay_until is not None and seq >= position.replay_until:
            position.replay_until = None
            ready.append(room_id)
        return Received([event], ready)

    def _joined(self, event: Joined, public_key: bytes | None) -> Received:
        room_id = event.room_id
        position = self.rooms.get(room_id)
        if room_id not in self._rejoining or position is None:
            if position is None:
                self.rooms[room_id] = RoomPosition(event.epoch, event.last_seq, public_key)
            return Received([event], [])
        self._rejoining.discard(room_id)
        # A replay cut short by another drop is over: this rejoin sets the target anew.
        position.replay_until = None
        events: list[Event] = [event]
        if event.recovered:
            if position.seq < event.last_seq:
                position.replay_until = event.last_seq
                return Received(events, [])
            return Received(events, [room_id])
        events.append(Gap(room_id, event.epoch, position.seq, event.last_seq))
        position.epoch, position.seq = event.epoch, event.last_seq
        return Received(events, [room_id])
