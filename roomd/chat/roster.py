"""Who is in the room as `roomd chat` shows it: the members, the host, who is typing.

Pure: the room's presence events in, the member list and the typing line out.
Times are `time.monotonic()` seconds passed in. A member shown as typing stops
being shown when it says so, sends a message, leaves, or has said nothing for
`TYPING_EXPIRY` seconds (a lost "stopped typing" must not stick).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from roomd.chat.printable import printable

TYPING_EXPIRY = 8.0
HOST_MARK = "★"


@attrs.define
class Roster:
    """The present members of one room, its host and who is typing, as this client saw them."""

    me: str
    host: str = ""
    members: list[str] = attrs.field(factory=list)
    online: bool = True
    # aid -> when it last said it is typing
    _typing: dict[str, float] = attrs.field(factory=dict)

    def joined(self, host: str, members: Iterable[str]) -> None:
        """Take the member list and host of a `joinSuccess` (a first join or a rejoin)."""
        self.host = host
        self.members = list(dict.fromkeys(members))
        self.online = True
        self._typing = {aid: at for aid, at in self._typing.items() if aid in self.members}

    def arrived(self, aid: str) -> None:
        """`aid` joined the room."""
        if aid not in self.members:
            self.members.append(aid)

    def left(self, aid: str) -> None:
        """`aid` is not present any more (left, kicked, disconnected or timed out)."""
        if aid in self.members:
            self.members.remove(aid)
        self._typing.pop(aid, None)

    def host_is(self, aid: str) -> None:
        """`aid` is the host now."""
        self.host = aid

    def offline(self) -> None:
        """This client lost its connection: the list is stale until the next `joined`."""
        self.online = False
        self._typing.clear()

    def gone(self) -> None:
        """This client is out of the room (left, kicked, the room deleted): nobody to show."""
        self.members, self.host = [], ""
        self._typing.clear()

    def typing(self, aid: str, is_typing: bool, now: float) -> None:
        """`aid` started (`is_typing`) or stopped typing at `now`."""
        if is_typing and aid != self.me:
            self._typing[aid] = now
        else:
            self._typing.pop(aid, None)

    def sent(self, aid: str) -> None:
        """`aid` sent a message: it is not typing any more."""
        self._typing.pop(aid, None)

    def expire(self, now: float) -> bool:
        """Forget typing older than `TYPING_EXPIRY` at `now`; return whether anyone was."""
        stale = [aid for aid, at in self._typing.items() if now - at > TYPING_EXPIRY]
        for aid in stale:
            del self._typing[aid]
        return bool(stale)

    def member_lines(self) -> list[str]:
        """Return the member list as shown: the host first and marked, this client marked."""
        ordered = sorted(self.members, key=lambda aid: aid != self.host)
        lines = [
            f"{HOST_MARK if aid == self.host else ' '} {printable(aid)}"
            + (" (host)" if aid == self.host else "")
            + (" (you)" if aid == self.me else "")
            for aid in ordered
        ]
        title = "members" if self.online else "members (offline)"
        return [title, *lines]

    def typing_line(self) -> str:
        """Return "bob is typing…" and the like, or "" when nobody is."""
        names = [printable(aid) for aid in self._typing]
        if not names:
            return ""
        if len(names) == 1:
            return f"{names[0]} is typing…"
        if len(names) <= 3:
            return f"{', '.join(names[:-1])} and {names[-1]} are typing…"
        return f"{len(names)} people are typing…"
