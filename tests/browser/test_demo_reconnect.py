"""The demo page across dropped connections: resending, owed rotations, retries, pacing, backoff.

Each test routes one tab's WebSocket through a `Tap` (Playwright's
`page.route_web_socket`), which forwards every frame between the page and roomd
and can hold a frame back, answer one itself, drop the connection (both sides,
or only the page's, so roomd still sees the AID present) and refuse reconnects
for a while, as a network that is down would.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from .conftest import TIMEOUT_MS, DemoPage, OpenDemo, three_tabs

pytestmark = pytest.mark.e2e

Frame = dict[str, Any]


class Link:
    """One connection through the tap: the page's side and roomd's."""

    def __init__(self, page_side: WebSocketRoute, server_side: WebSocketRoute) -> None:
        self.page_side = page_side
        self.server_side = server_side
        self.page_open = True
        self.server_open = True

    def close_page_side(self) -> None:
        """Close the page's side: the page sees its connection drop."""
        if self.page_open:
            self.page_open = False
            self.page_side.close()

    def close_server_side(self) -> None:
        """Close roomd's side: roomd sees the connection go."""
        if self.server_open:
            self.server_open = False
            self.server_side.close()


class Tap:
    """A page's WebSocket routed through the test (install it with `open_demo(prepare=...)`)."""

    def __init__(self) -> None:
        self.links: list[Link] = []
        # monotonic time of every connection attempt the page made
        self.attempts: list[float] = []
        # connection attempts still to refuse: the page's side is closed at once
        self.refuse = 0
        # frame type -> how many more to hold: page to roomd, and roomd to page
        self.hold_up: dict[str, int] = {}
        self.hold_down: dict[str, int] = {}
        self.held: list[Frame] = []
        # answers a page frame instead of roomd when it returns a frame
        self.answer: Callable[[Frame], Frame | None] | None = None
        # changes a page frame on its way to roomd
        self.rewrite: Callable[[Frame], Frame] | None = None
        # every frame roomd sent the page, with the monotonic time it passed the tap
        self.down: list[tuple[float, Frame]] = []
        self.up: list[tuple[float, Frame]] = []

    def prepare(self, page: Page) -> None:
        """Route `page`'s connections to roomd's `/v1` through this tap."""
        page.route_web_socket(re.compile(r"/v1$"), self._route)

    def _hold(self, holding: dict[str, int], frame: Frame) -> bool:
        kind = frame.get("type", "")
        if holding.get(kind, 0) <= 0:
            return False
        holding[kind] -= 1
        self.held.append(frame)
        return True

    def _route(self, ws: WebSocketRoute) -> None:
        self.attempts.append(time.monotonic())
        if self.refuse > 0:
            self.refuse -= 1
            ws.close()
            return
        server = ws.connect_to_server()
        link = Link(ws, server)
        self.links.append(link)

        def to_server(raw: str | bytes) -> None:
            frame = json.loads(raw)
            self.up.append((time.monotonic(), frame))
            if not link.server_open or self._hold(self.hold_up, frame):
                return
            reply = self.answer(frame) if self.answer is not None else None
            if reply is not None:
                ws.send(json.dumps(reply))
                return
            server.send(raw if self.rewrite is None else json.dumps(self.rewrite(frame)))

        def to_page(raw: str | bytes) -> None:
            frame = json.loads(raw)
            self.down.append((time.monotonic(), frame))
            if link.page_open and not self._hold(self.hold_down, frame):
                ws.send(raw)

        def page_closed(code: int | None, reason: str | None) -> None:
            if link.page_open:  # the page closed it, not `drop`
                link.page_open = False
                link.close_server_side()

        def server_closed(code: int | None, reason: str | None) -> None:
            link.server_open = False
            if link.page_open:
                link.page_open = False
                ws.close(code=code, reason=reason)

        ws.on_message(to_server)
        server.on_message(to_page)
        # Handlers of their own turn off Playwright's forwarding of a close: `drop` may keep
        # roomd's side open.
        ws.on_close(page_closed)
        server.on_close(server_closed)

    def drop(self, *, keep_server: bool = False) -> None:
        """Drop the current connection; with `keep_server`, roomd's side stays open."""
        link = self.links[-1]
        link.close_page_side()
        if not keep_server:
            link.close_server_side()

    def close_all(self) -> None:
        """Close every connection's roomd side still open."""
        for link in self.links:
            link.close_server_side()


def wait_for(page: Page, condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `condition()`, letting Playwright run the tap's callbacks meanwhile."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(20)


def wait_snapshot(demo: DemoPage, condition: str) -> None:
    """Wait until `condition`, JS over `s` = the page's snapshot, holds."""
    demo.page.wait_for_function(
        f"() => {{ const s = window.roomdDemo.snapshot(); return {condition}; }}"
    )


def refuse_first(kind: str, code: str, refused: list[float]) -> Callable[[Frame], Frame | None]:
    """Return a tap answer that refuses the first `kind` frame with `code` (retryAfter 0.3 s)."""

    def answer(frame: Frame) -> Frame | None:
        if frame.get("type") != kind or refused:
            return None
        refused.append(time.monotonic())
        return {
            "type": "error",
            "code": code,
            "message": "try again later",
            "id": frame["id"],
            "roomId": frame["roomId"],
            "retryAfter": 0.3,
        }

    return answer


def test_a_message_that_never_reached_roomd_is_sent_after_the_rejoin(open_demo: OpenDemo) -> None:
    """B's message is lost with its connection: it waits in the outbox and arrives once after."""
    tap = Tap()
    a = open_demo()
    b = open_demo(a.create_room(), prepare=tap.prepare)
    b_aid = b.aid
    b.wait_key(1)
    a.wait_admitted(b_aid)
    tap.hold_up["message"] = 1
    b.send("lost with the connection")
    wait_for(b.page, lambda: len(tap.held) == 1, "the message to be held")
    tap.refuse = 1_000_000
    tap.drop()
    wait_snapshot(b, "!s.joined && s.outbox === 1 && s.inflight === 0")
    expect(b.page.locator("#outbox")).to_have_text("1 message(s) waiting to be sent")
    tap.refuse = 0
    b.wait_message(b_aid, "lost with the connection")
    a.wait_message(b_aid, "lost with the connection")
    expect(b.page.locator("#outbox")).to_have_text("")
    b.send("after")
    a.wait_message(b_aid, "after")
    for page in (a, b):
        assert page.texts() == [(b_aid, "lost with the connection"), (b_aid, "after")]


def _unrecoverable(frame: Frame) -> Frame:
    """Return `frame`, a rejoin's `since` naming a stream epoch roomd does not know."""
    if frame.get("type") == "joinChatroom" and "since" in frame:
        return {**frame, "since": {**frame["since"], "epoch": "not-this-rooms-epoch"}}
    return frame


@pytest.mark.parametrize("recovery", ["replay", "history"])
def test_a_message_roomd_ordered_but_never_echoed_is_not_sent_twice(
    open_demo: OpenDemo, recovery: str
) -> None:
    """B's echo is lost with its connection: the replay (or history) holds it; B sends it once."""
    tap = Tap()
    if recovery == "history":
        tap.rewrite = _unrecoverable  # recovered: false, so the page reads history instead
    a = open_demo()
    b = open_demo(a.create_room(), prepare=tap.prepare)
    a_aid, b_aid = a.aid, b.aid
    b.wait_key(1)
    a.wait_admitted(b_aid)
    tap.hold_down["newMessage"] = 1
    b.send("ordered, not echoed")
    a.wait_message(b_aid, "ordered, not echoed")
    wait_for(b.page, lambda: len(tap.held) == 1, "the echo to be held")
    tap.refuse = 1_000_000
    tap.drop()
    wait_snapshot(b, "!s.joined && s.outbox === 1")
    a.send("while B is away")
    a.wait_message(a_aid, "while B is away")
    tap.refuse = 0
    b.wait_message(a_aid, "while B is away")
    b.wait_message(b_aid, "ordered, not echoed")
    wait_snapshot(b, "s.joined && s.outbox === 0 && s.inflight === 0")
    b.send("marker")
    for page in (a, b):
        page.wait_message(b_aid, "marker")
        assert page.texts() == [
            (b_aid, "ordered, not echoed"),
            (a_aid, "while B is away"),
            (b_aid, "marker"),
        ]
    sent = [f for _, f in tap.up if f.get("type") == "message"]
    assert len(sent) == 2  # the first and the marker: nothing was sent again
    joins = [f for _, f in tap.down if f.get("type") == "joinSuccess" and "recovered" in f]
    assert [f["recovered"] for f in joins] == [recovery == "replay"]


@pytest.mark.parametrize(
    ("held", "epoch"),
    [
        pytest.param("updateRoomKey", 2, id="update-never-reached-roomd"),
        pytest.param("roomKeyUpdated", 3, id="confirmation-never-reached-the-host"),
    ],
)
def test_a_rotation_cut_short_by_a_drop_is_done_after_the_rejoin(
    open_demo: OpenDemo, held: str, epoch: int
) -> None:
    """The host's connection drops mid-rotation after a kick: after its rejoin it rotates again."""
    tap = Tap()
    a, b, c, link = three_tabs(open_demo, prepare_a=tap.prepare)
    a_aid, c_aid = a.aid, c.aid
    (tap.hold_up if held == "updateRoomKey" else tap.hold_down)[held] = 1
    a.page.click(f'#members button.kick[data-aid="{c_aid}"]')
    wait_for(a.page, lambda: len(tap.held) == 1, f"{held} to be held")
    # Only the page's side drops: roomd still has A in the room, so A is still the host.
    tap.drop(keep_server=True)
    for page in (a, b):
        page.wait_key(epoch)
    assert a.snapshot()["amHost"] and not a.snapshot()["rotationOwed"]
    a.send(f"under epoch {epoch}")
    b.wait_message(a_aid, f"under epoch {epoch}")
    assert str(epoch) not in c.snapshot()["keys"]
    # The rotation after the kick retired the old invite secrets: the link shown is new.
    assert a.page.locator("#invite-link").input_value() != link
    tap.close_all()


def test_a_host_back_without_the_current_key_rotates(open_demo: OpenDemo) -> None:
    """B, host, is away while A hosts and rotates and leaves: back as host, B rotates anew."""
    tap = Tap()
    b = open_demo(prepare=tap.prepare)
    a = open_demo(b.create_room())
    a_aid, b_aid = a.aid, b.aid
    a.wait_key(1)
    b.wait_admitted(a_aid)
    tap.refuse = 1_000_000
    tap.drop()
    expect(a.page.locator("#members li[data-host=true]")).to_have_attribute("data-aid", a_aid)
    a.wait_key(2)  # A, host now, rotated
    a.page.click("#leave")
    expect(a.page.locator("#lobby")).to_be_visible()
    assert b.snapshot()["amHost"]  # B never heard it stopped being the host
    tap.refuse = 0
    # B rejoins the empty room and is its host again, without the key of epoch 2.
    b.wait_key(3)
    wait_snapshot(b, "s.amHost && s.joined")
    assert "2" not in b.snapshot()["keys"]
    assert b_aid in b.members()


@pytest.mark.parametrize("code", ["rateLimited", "unavailable"])
def test_a_rotation_refused_for_now_is_tried_again_after_retry_after(
    open_demo: OpenDemo, code: str
) -> None:
    """updateRoomKey answered rateLimited or unavailable: the host tries again after retryAfter."""
    tap = Tap()
    refused: list[float] = []
    a, b, c, _ = three_tabs(open_demo, prepare_a=tap.prepare)
    tap.answer = refuse_first("updateRoomKey", code, refused)
    a.page.click(f'#members button.kick[data-aid="{c.aid}"]')
    for page in (a, b):
        page.wait_key(2)
    updates = [t for t, f in tap.up if f.get("type") == "updateRoomKey" and f["keyEpoch"] == 2]
    assert len(refused) == 1 and len(updates) == 2
    assert updates[1] - refused[0] >= 0.3
    assert "2" not in c.snapshot()["keys"]


@pytest.mark.parametrize("code", ["rateLimited", "unavailable"])
def test_a_knock_refused_for_now_is_sent_again_after_retry_after(
    open_demo: OpenDemo, code: str
) -> None:
    """A joiner's knock answered rateLimited or unavailable goes again, and the host admits."""
    tap = Tap()
    refused: list[float] = []
    tap.answer = refuse_first("signal", code, refused)
    a = open_demo()
    b = open_demo(a.create_room(), prepare=tap.prepare)
    a.wait_admitted(b.aid)
    knocks = [t for t, f in tap.up if f.get("type") == "signal"]
    assert len(refused) == 1 and len(knocks) == 2
    assert knocks[1] - refused[0] >= 0.3


def test_a_kick_retires_the_old_link_before_its_rotation_is_confirmed(
    open_demo: OpenDemo,
) -> None:
    """While the kick's rotation awaits roomd's confirmation, a newcomer with the old link
    (a kicked guest under a fresh AID, say) knocks in vain: it would get the new key."""
    tap = Tap()
    a, b, c, link = three_tabs(open_demo, prepare_a=tap.prepare)
    tap.hold_down["roomKeyUpdated"] = 1  # A's rotation stays unconfirmed
    a.page.click(f'#members button.kick[data-aid="{c.aid}"]')
    wait_for(a.page, lambda: len(tap.held) == 1, "the rotation's confirmation to be held")
    d = open_demo(link)
    d_aid = d.aid

    def knocked() -> bool:
        return any(f.get("type") == "signal" and f.get("from") == d_aid for _, f in tap.down)

    wait_for(a.page, knocked, "the newcomer's knock")
    # A takes frames in order: once it shows B typing, it has taken D's knock.
    b.page.fill("#message-input", "still here")
    expect(a.page.locator("#typing")).to_have_attribute("data-typing", b.aid)
    assert d_aid not in a.snapshot()["admitted"]


def test_a_batch_refused_for_a_member_still_listed_waits_for_their_user_left(
    open_demo: OpenDemo,
) -> None:
    """roomd refuses the rotation's batch (notFound) before A has seen C go, as in a cluster:
    A resends it, without C, only once C's userLeft comes."""
    tap = Tap()
    refused: list[float] = []
    a, b, c, link = three_tabs(open_demo, prepare_a=tap.prepare)
    d = open_demo(link)
    d.wait_key(1)
    a.wait_admitted(d.aid)

    def refuse_first_delivery(frame: Frame) -> Frame | None:
        if frame.get("type") != "signal" or refused:
            return None
        refused.append(time.monotonic())
        return {"type": "error", "code": "notFound", "message": "gone", "id": frame["id"]}

    tap.answer = refuse_first_delivery
    d.page.click("#leave")  # A rotates and delivers to B and C in one batch: refused
    wait_for(a.page, lambda: bool(refused), "the batch to be refused")
    c_aid = c.aid
    c.page.click("#leave")  # and A rotates again, to epoch 3
    b.wait_key(3)
    assert "2" in b.snapshot()["keys"]  # the refused delivery came after all
    left = next(t for t, f in tap.down if f.get("type") == "userLeft" and f["aid"] == c_aid)
    # The first batch after the refusal: epoch 2's, without C, once C's userLeft came.
    resent = next(f for t, f in tap.up if f.get("type") == "signal" and t >= refused[0])
    assert [entry["to"] for entry in resent["signals"]] == [b.aid]
    sent_at = next(t for t, f in tap.up if f is resent)
    assert sent_at > left


def test_a_member_whose_delivery_was_lost_knocks_again(open_demo: OpenDemo) -> None:
    """The rotation's key delivery to B never arrives: B knocks again and gets the key."""
    tap = Tap()
    a, b, c, _ = three_tabs(open_demo, prepare_b=tap.prepare)
    knocks_before = sum(f.get("type") == "signal" for _, f in tap.up)
    tap.hold_down["signal"] = 1  # lost on the way: the next signal roomd sends B
    a.page.click(f'#members button.kick[data-aid="{c.aid}"]')
    a.wait_key(2)
    wait_for(b.page, lambda: len(tap.held) == 1, "the delivery to be lost")
    # A knock 3 s after the key is first seen missing, a delivery: well inside 15 s.
    b.page.wait_for_function(
        "() => window.roomdDemo.snapshot().keys['2'] !== undefined", timeout=15_000
    )
    b.wait_key(2)
    # One knock again (a second only if the delivery took over 6 s): no storm.
    knocks_again = sum(f.get("type") == "signal" for _, f in tap.up) - knocks_before
    assert 1 <= knocks_again <= 2
    a.send("after the lost delivery")
    b.wait_message(a.aid, "after the lost delivery")


def test_a_burst_of_messages_is_paced_under_the_rate_limit(open_demo: OpenDemo) -> None:
    """Forty messages at once go out paced by hello.limits: each arrives once, and roomd
    refuses fewer than the ten it would refuse of an unpaced burst (none, unless stalled)."""
    tap = Tap()
    a = open_demo(prepare=tap.prepare)
    b = open_demo(a.create_room())
    a_aid = a.aid
    b.wait_key(1)
    texts = [f"burst {i}" for i in range(40)]
    a.page.evaluate(
        """(texts) => {
             for (const text of texts) {
               document.getElementById("message-input").value = text;
               document.getElementById("send").click();
             }
           }""",
        texts,
    )
    for page in (a, b):
        for text in texts:
            page.wait_message(a_aid, text)
    # Forty frames at once are ten past roomd's burst of 30: unpaced, roomd would refuse ten.
    # A stall between the page and roomd (the tap's thread, a busy machine) bunches paced
    # frames up, and a leaky bucket cannot bank the time it stood empty: then roomd may
    # refuse a few, which the page sends again after retryAfter, out of their first order.
    refusals = [f for _, f in tap.down if f.get("type") == "error"]
    assert [f["code"] for f in refusals] == ["rateLimited"] * len(refusals)
    assert len(refusals) < 10
    expected = [(a_aid, text) for text in texts]
    for page in (a, b):
        shown = page.texts()
        assert sorted(shown) == sorted(expected)  # each once
        if not refusals:
            assert shown == expected


# Records the delay of every reconnect the page schedules (its `connect` by name), so
# the backoff is read exactly, not from wall-clock gaps a stalled thread would stretch.
RECORD_RECONNECTS = """
window.reconnectDelays = [];
const setTimeoutAsGiven = window.setTimeout;
window.setTimeout = function (callback, delay, ...rest) {
  if (typeof callback === "function" && callback.name === "connect") {
    window.reconnectDelays.push(delay);
  }
  return setTimeoutAsGiven.call(this, callback, delay, ...rest);
};
"""


def test_reconnects_back_off_from_a_tenth_of_a_second_doubling(open_demo: OpenDemo) -> None:
    """After a drop the page retries after ~0.1 s, doubling each failure; an authOk starts over."""
    tap = Tap()

    def prepare(page: Page) -> None:
        page.add_init_script(RECORD_RECONNECTS)
        tap.prepare(page)

    a = open_demo(prepare=prepare)
    a.wait_online()
    tap.refuse = 4
    tap.drop()
    wait_for(a.page, lambda: len(tap.attempts) == 6, "four refused attempts and a fifth")
    a.wait_online()
    delays = a.page.evaluate("window.reconnectDelays")
    # Attempt n waits 100 * 2**(n-1) ms, less up to half of it: 50-100, ..., 800-1600 ms.
    assert len(delays) == 5, delays
    for n, delay in enumerate(delays, start=1):
        assert 50 * 2 ** (n - 1) <= delay <= 100 * 2 ** (n - 1), delays
    # Each attempt came no sooner than the page said it would.
    gaps = [later - earlier for earlier, later in itertools.pairwise(tap.attempts[1:])]
    assert all(gap >= delay / 1000 - 0.02 for gap, delay in zip(gaps, delays[1:], strict=True))
    # Online again: the next drop starts from 0.1 s.
    tap.drop()
    wait_for(a.page, lambda: len(tap.attempts) == 7, "a reconnect")
    assert 50 <= a.page.evaluate("window.reconnectDelays.at(-1)") <= 100
    a.wait_online()
