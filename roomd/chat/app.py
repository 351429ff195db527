"""The terminal chat: a textual `App` on one end-to-end-encrypted room of a `SecureClient`.

Widgets, by id: `#invite` (the invite link while this client is host, else
the room and its host), `#log` (the message log, scrolled by `#log-scroll`),
`#members`, `#typing` and `#input`.

Three workers run while the app does, so that the screen never waits on roomd:

- `_follow` reads the client's event stream and feeds the `Transcript` and
  the `Roster`; the screen is rendered from them (at most once per batch of
  events, `call_later`);
- `_send_outbox` carries out what the user asked (send, kick, leave) one
  request at a time, so messages go out in the order they were typed;
- `_announce_typing` tells the room whether the user is typing: only the
  newest state, so a slow `typing` never queues behind a message or piles up.

The SDK reconnects and recovers by itself: the app only shows it.

Resource handling: the app owns no connection. The caller keeps the
`SecureClient` open around `run_async` (or `run_test`); the workers end with
the app.
"""

from __future__ import annotations

import asyncio
import time

from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.timer import Timer
from textual.widgets import Input, Static

from roomd.chat.printable import printable
from roomd.chat.roster import Roster
from roomd.chat.slash import HELP, Help, Kick, Leave, Mistake, Quit, Say, ShowInvite, parse_line
from roomd.chat.transcript import Transcript
from roomd.client.client import ConnectionLost, RequestError
from roomd.client.events import (
    Disconnected,
    ErrorEvent,
    Gap,
    HostUpdated,
    Joined,
    LeftRoom,
    Reconnected,
    RoomDeleted,
    RoomLost,
    Stopped,
    Typing,
    UserJoined,
    UserLeft,
)
from roomd.client.secure import NoRoomKey, SecureClient
from roomd.client.secure_room import (
    Admitted,
    KeyRotated,
    Message,
    ReactionMessage,
    SecureEvent,
    Unreadable,
)

# Lines typed while earlier ones still wait to go out (no key yet, reconnecting).
OUTBOX_SIZE = 32
# Seconds without a keystroke after which this user "stopped typing".
TYPING_IDLE = 3.0
# How often others' typing is checked for expiry.
TYPING_REFRESH = 1.0

Request = Say | Kick | Leave

_LEFT = {
    "left": "{aid} left",
    "kicked": "{aid} was kicked",
    "disconnected": "{aid} disconnected",
    "timeout": "{aid} timed out",
}
_VERB = {Say: "message", Kick: "kick", Leave: "leave"}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ChatApp(App[None]):
    """`roomd chat`'s screen on room `room_id` of `client` (which `created` it, or joined)."""

    TITLE = "roomd chat"
    AUTO_FOCUS = "#input"
    CSS = """
    #invite { height: auto; padding: 0 1; background: $panel; }
    #main { height: 1fr; }
    #log-scroll { width: 1fr; padding: 0 1; }
    #members { width: 30; height: 100%; padding: 0 1; border-left: vkey $primary; }
    #typing { height: 1; padding: 0 1; text-style: italic; }
    """

    def __init__(self, client: SecureClient, room_id: str, *, created: bool) -> None:
        super().__init__()
        self.client = client
        self.room_id = room_id
        self.created = created
        self.transcript = Transcript()
        self.roster = Roster(client.aid)
        self.in_room = True
        self._outbox: asyncio.Queue[Request] = asyncio.Queue(OUTBOX_SIZE)
        self._typing = False
        self._typing_changed = asyncio.Event()
        self._idle_timer: Timer | None = None
        self._render_pending = False
        self._joined_once = False

    def compose(self) -> ComposeResult:
        """Lay out the invite line, the log beside the members, the typing line and the input."""
        yield Static(id="invite", markup=False)
        with Horizontal(id="main"):
            with VerticalScroll(id="log-scroll"):
                yield Static(id="log", markup=False)
            yield Static(id="members", markup=False)
        yield Static(id="typing", markup=False)
        yield Input(id="input", placeholder="a message, or /help")

    def on_mount(self) -> None:
        """Start the workers and draw the screen."""
        self.run_worker(self._follow(), name="follow")
        self.run_worker(self._send_outbox(), name="outbox")
        self.run_worker(self._announce_typing(), name="typing")
        self.set_interval(TYPING_REFRESH, self._expire_typing)
        self._render()

    # -- what the room says ------------------------------------------------------------

    async def _follow(self) -> None:
        async for event in self.client.events():
            self._show(event, _now_ms(), time.monotonic())
            self._changed()

    def _show(self, event: SecureEvent, now_ms: int, now: float) -> None:
        """Feed `event` to the transcript and roster (`now_ms` wall clock, `now` monotonic)."""
        room_id = getattr(event, "room_id", None)
        if room_id is not None and room_id != self.room_id:
            return
        log, roster = self.transcript, self.roster
        match event:
            case Message(sender=sender):
                log.message(event)
                roster.sent(sender)
            case ReactionMessage():
                log.reaction(event, now_ms)
            case Unreadable():
                log.unreadable(event, now_ms)
            case KeyRotated(key_epoch=epoch, by=by):
                log.status(f"key rotated to epoch {epoch} by {by}", now_ms)
            case Admitted(aid=aid):
                log.status(f"admitted {aid}: their invite link checked out", now_ms)
            case Joined():
                self._joined(event, now_ms)
            case UserJoined(aid=aid):
                roster.arrived(aid)
                log.status(f"{aid} joined", now_ms)
            case UserLeft(aid=aid, reason=reason):
                roster.left(aid)
                log.status(
                    _LEFT.get(reason, "{aid} left ({reason})").format(aid=aid, reason=reason),
                    now_ms,
                )
            case HostUpdated(host=host):
                roster.host_is(host)
                log.status(f"{host} is the host now", now_ms)
            case Typing(aid=aid, is_typing=is_typing):
                roster.typing(aid, is_typing, now)
            case Gap(last_seq=last_seq):
                log.status(
                    f"some messages up to #{last_seq} could not be replayed: they are missing here",
                    now_ms,
                )
            case Disconnected():
                roster.offline()
                log.status("disconnected — reconnecting…", now_ms)
            case Reconnected():
                log.status("reconnected", now_ms)
            case Stopped(reason=reason):
                self._gone(f"disconnected for good ({reason})", now_ms)
            case RoomLost(error=error):
                self._gone(f"could not rejoin the room: {error.code}: {error.message}", now_ms)
            case LeftRoom(reason="kicked"):
                self._gone("you were kicked from the room", now_ms)
            case LeftRoom():
                self._gone("you left the room", now_ms)
            case RoomDeleted(reason=reason):
                self._gone(f"the room was {reason}", now_ms)
            case ErrorEvent(code=code, message=message):
                log.status(f"roomd: {code}: {message}", now_ms)

    def _joined(self, event: Joined, now_ms: int) -> None:
        self.transcript.stream(event.epoch)
        previous_host = self.roster.host
        self.roster.joined(event.host, [member.aid for member in event.members])
        if self._joined_once:
            # A rejoin after a reconnect, which "reconnected" announced; whoever came
            # back first may be host now.
            if event.host != previous_host:
                self.transcript.status(f"{event.host} is the host now", now_ms)
            return
        self._joined_once = True
        if self.created:
            self.transcript.status(f"created room {self.room_id}: share the invite link", now_ms)
        else:
            self.transcript.status(f"joined room {self.room_id}; {event.host} is host", now_ms)

    def _gone(self, text: str, now_ms: int) -> None:
        self.in_room = False
        self.roster.gone()
        self.transcript.status(f"{text} — /quit closes the chat", now_ms)

    def _expire_typing(self) -> None:
        if self.roster.expire(time.monotonic()):
            self._changed()

    # -- the screen --------------------------------------------------------------------

    def _changed(self) -> None:
        if not self._render_pending:
            self._render_pending = self.call_later(self._render)

    def _render(self) -> None:
        self._render_pending = False
        if not self.is_running:
            return  # the app is shutting down: events still come, the screen is going
        log = self.query_one("#log", Static)
        scroll = self.query_one("#log-scroll", VerticalScroll)
        following = scroll.scroll_y >= scroll.max_scroll_y
        lines = [
            Text(entry.render(), style="dim" if entry.is_status else "")
            for entry in self.transcript.entries
        ]
        log.update(Text("\n").join(lines))
        if following:
            scroll.scroll_end(animate=False)
        self.query_one("#members", Static).update("\n".join(self.roster.member_lines()))
        self.query_one("#typing", Static).update(self.roster.typing_line())
        self.query_one("#invite", Static).update(printable(self._invite_line()))

    def _invite_line(self) -> str:
        room = self.client.rooms.get(self.room_id)
        if not self.in_room or room is None:
            return f"room {self.room_id}: you are not in it any more"
        if self.roster.host == self.client.aid and room.invite_secret is not None:
            return f"invite: {self.client.invite_link(self.room_id)}"
        host = self.roster.host or "unknown"
        return f"room {self.room_id} · host {host} · /invite shows a link to share"

    # -- what the user says ------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        """Announce typing while the input holds a message (not a command)."""
        self._set_typing(bool(event.value) and not event.value.startswith("/"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Carry out the line: send it, or run its slash command."""
        event.input.clear()
        self._set_typing(False)
        now_ms = _now_ms()
        match parse_line(event.value):
            case None:
                return
            case Quit():
                self.exit()
                return
            case ShowInvite():
                self._show_invite(now_ms)
            case Help():
                self.transcript.status(HELP, now_ms)
            case Mistake(message=message):
                self.transcript.status(message, now_ms)
            case Say() | Kick() | Leave() as request:
                self._queue(request, now_ms)
        self._changed()

    def _show_invite(self, now_ms: int) -> None:
        room = self.client.rooms.get(self.room_id)
        if room is None or room.invite_secret is None:
            self.transcript.status("no invite link: this client holds no invite secret", now_ms)
            return
        self.transcript.status(f"invite link: {self.client.invite_link(self.room_id)}", now_ms)

    def _queue(self, request: Request, now_ms: int) -> None:
        if not self.in_room:
            self.transcript.status(
                "you are not in the room any more — /quit closes the chat", now_ms
            )
            return
        if isinstance(request, Kick) and self.roster.host != self.client.aid:
            self.transcript.status(f"only the host can kick; {self.roster.host} is host", now_ms)
            return
        try:
            self._outbox.put_nowait(request)
        except asyncio.QueueFull:
            self.transcript.status(f"not sent: {OUTBOX_SIZE} lines still wait to go out", now_ms)

    async def _send_outbox(self) -> None:
        while True:
            request = await self._outbox.get()
            verb = _VERB[type(request)]
            try:
                await self._carry_out(request)
            except NoRoomKey:
                self._status(f"{verb} not sent: no key of the room's current epoch arrived")
            except RequestError as refused:
                self._status(f"{verb} refused: {refused}")
            except (ConnectionLost, TimeoutError):
                self._status(f"{verb} not sent: no answer from roomd")

    async def _carry_out(self, request: Request) -> None:
        # Out of the room meanwhile (left, kicked): the SDK refuses it with notMember.
        match request:
            case Say(text=text):
                await self.client.send(self.room_id, text)
            case Kick(aid=aid):
                await self.client.kick(self.room_id, aid, ban=True)
            case Leave():
                await self.client.leave(self.room_id)

    def _status(self, text: str) -> None:
        self.transcript.status(text, _now_ms())
        self._changed()

    def _set_typing(self, typing: bool) -> None:
        if self._idle_timer is not None:
            self._idle_timer.stop()
            self._idle_timer = None
        if typing:
            self._idle_timer = self.set_timer(TYPING_IDLE, lambda: self._set_typing(False))
        if typing != self._typing:
            self._typing = typing
            self._typing_changed.set()

    async def _announce_typing(self) -> None:
        announced = False
        while True:
            await self._typing_changed.wait()
            self._typing_changed.clear()
            wanted = self._typing
            if wanted == announced or not self.in_room:
                continue
            try:
                await self.client.typing(self.room_id, wanted)
            except (ConnectionLost, TimeoutError):
                continue  # best effort: the next change is announced again
            announced = wanted
