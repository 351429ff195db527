"""What awaits roomd on one client (`Pending`), without a network."""

from __future__ import annotations

from roomd.client.events import NewMessage, Typing
from roomd.client.waiter import FIRED_REMEMBERED, Pending, Waiter


def message(sender: str, client_msg_id: str) -> NewMessage:
    """Return the echo of a message `sender` sent as `client_msg_id`."""
    return NewMessage("room", 1, "m1", sender, b"c", None, client_msg_id, 1, None)


def test_a_refusal_names_a_fired_frame_once_and_only_the_newest_are_kept() -> None:
    """The newest FIRED_REMEMBERED frames sent without a waiter can be named, each once."""
    pending = Pending()
    for request_id in range(1, FIRED_REMEMBERED + 11):
        pending.remember_fired({"type": "typing", "id": request_id})
    assert pending.fired_frame(10) is None  # forgotten: older than the newest 64
    assert pending.fired_frame(11) == {"type": "typing", "id": 11}
    assert pending.fired_frame(11) is None  # named once
    assert pending.fired_frame(None) is None


def test_a_lost_connection_fails_requests_but_not_messages() -> None:
    """Replies awaited on a lost connection fail; a message's echo waits for the rejoin."""
    pending = Pending()
    request, echo = Waiter(None), Waiter(None)
    pending.expect_reply(1, request)
    pending.expect_reply(2, echo)
    pending.echoes["c-1"] = echo
    pending.remember_fired({"type": "signal", "id": 3})
    lost = ConnectionError("lost")
    pending.connection_lost(lost)
    assert request.result is lost and not echo.done.is_set()
    assert pending.reply_waiter(1) is None and pending.fired_frame(3) is None
    stopped = ConnectionError("stopped")
    pending.stopped(stopped)
    assert echo.result is stopped


def test_an_event_passed_on_settles_own_echoes_and_matching_waiters() -> None:
    """An echo settles its message only when this client sent it; matchers see every event."""
    pending = Pending()
    echo = Waiter(None)
    pending.echoes["c-1"] = echo
    typing = Waiter(lambda event: isinstance(event, Typing))
    pending.matchers.append(typing)
    pending.passed_on(message("mallory", "c-1"), "alice")
    assert not echo.done.is_set()  # someone else's message under the same clientMsgId
    mine = message("alice", "c-1")
    pending.passed_on(mine, "alice")
    assert echo.result is mine and not typing.done.is_set()
    pending.passed_on(Typing("room", "bob", True), "alice")
    assert typing.result == Typing("room", "bob", True)
