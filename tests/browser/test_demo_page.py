"""The browser demo in chromium against a real `roomd serve --demo`: E2EE.md, chat, kicks.

The vectors are the SDK's shipped `roomd/client/e2ee_vectors.json`, run through
the page's `window.roomdE2EE`, so the page and the Python SDK agree byte for
byte. The chat tests drive two or three tabs (each its own browser context, so
its own guest AID and device key) through the page's DOM, and a plain
WebSocket member watches what the relay carries.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from ..e2e_support import RECV_TIMEOUT, RoomdProcess, Silent, WsClient
from .conftest import TIMEOUT_MS, WATCH_CSP, DemoPage, OpenDemo, three_tabs

pytestmark = pytest.mark.e2e

VECTORS: dict[str, Any] = json.loads(
    resources.files("roomd.client").joinpath("e2ee_vectors.json").read_text("utf-8")
)

# Runs every vector through window.roomdE2EE and returns what the page computed.
RUN_VECTORS = (Path(__file__).parent / "run_vectors.js").read_text("utf-8")


def test_vectors_in_browser(open_demo: OpenDemo) -> None:
    """The page's window.roomdE2EE reproduces every shipped vector and refuses every bad blob."""
    demo = open_demo()
    got = demo.page.evaluate(RUN_VECTORS, VECTORS)
    V = VECTORS
    assert got["lp"] == [v["out"] for v in V["lp"]]
    assert got["wrapKey"] == [v["out"] for v in V["wrapKey"]]
    assert got["ad"] == [v["out"] for v in V["ad"]]
    assert got["sealedRoomKey"] == [
        {"out": v["out"], "roomKey": v["roomKey"]} for v in V["sealedRoomKey"]
    ]
    assert got["keyDelivery"] == [
        {
            "sharedSecret": v["sharedSecret"],
            "sharedBack": v["sharedSecret"],
            "wrapKey": v["wrapKey"],
            "out": v["out"],
            "opened": {
                "epoch": v["epoch"],
                "senderPublic": v["senderPublic"],
                "roomKey": v["roomKey"],
            },
        }
        for v in V["keyDelivery"]
    ]
    assert got["knock"] == [
        {"knockKey": v["knockKey"], "out": v["out"], "nextEpoch": v["nextEpoch"], "matches": True}
        for v in V["knock"]
    ]
    assert got["message"] == [
        {
            "plaintext": v["plaintext"],
            "iv": v["iv"],
            "out": v["out"],
            "decoded": {"text": v["text"], "sentAt": v["sentAt"]},
        }
        for v in V["message"]
    ]
    assert got["reaction"] == [
        {
            "plaintext": v["plaintext"],
            "iv": v["iv"],
            "out": v["out"],
            "decoded": {
                "reaction": {
                    "messageId": v["messageId"],
                    "emoji": v["emoji"],
                    "remove": v["remove"],
                },
                "sentAt": v["sentAt"],
            },
        }
        for v in V["reaction"]
    ]
    assert got["invite"] == [
        {
            "link": v["link"],
            "parsed": {"url": v["base"], "roomId": v["roomId"], "secret": v["secret"]},
        }
        for v in V["invite"]
    ]
    expected_refusals = ["no match" if v["what"] == "knock" else "refused" for v in V["refused"]]
    # A knock may also be refused outright (wrong length or first byte).
    got_refusals = [
        "no match" if v["what"] == "knock" and r == "refused" else r
        for v, r in zip(V["refused"], got["refused"], strict=True)
    ]
    assert got_refusals == expected_refusals, [
        (v["what"], v["why"], r)
        for v, r in zip(V["refused"], got["refused"], strict=True)
        if r not in ("refused", "no match")
    ]


def test_two_pages_chat(open_demo: OpenDemo) -> None:
    """A creates a room, B opens its link: both see the members, each other's typing and texts."""
    a = open_demo()
    link = a.create_room()
    assert link.startswith(a.page.url.split("#")[0] + "#room=")
    b = open_demo(link)
    a_aid, b_aid = a.aid, b.aid
    b.wait_key(1)
    for page in (a, b):
        page.wait_members(a_aid, b_aid)
        host = page.page.locator("#members li[data-host=true]")
        expect(host).to_have_attribute("data-aid", a_aid)

    a.page.fill("#message-input", "typing this")
    expect(b.page.locator("#typing")).to_have_attribute("data-typing", a_aid)
    expect(b.page.locator("#typing")).to_contain_text(f"{a_aid} is typing")
    a.page.click("#send")
    expect(b.page.locator("#typing")).to_have_text("")
    b.wait_message(a_aid, "typing this")

    b.page.fill("#message-input", "hé, from B 🌍")
    expect(a.page.locator("#typing")).to_have_attribute("data-typing", b_aid)
    b.page.press("#message-input", "Enter")
    expect(a.page.locator("#typing")).to_have_text("")
    a.send("<b>not bold</b> & back to B")

    conversation = [
        (a_aid, "typing this"),
        (b_aid, "hé, from B 🌍"),
        (a_aid, "<b>not bold</b> & back to B"),
    ]
    for page in (a, b):
        for sender, text in conversation:
            page.wait_message(sender, text)
        assert page.texts() == conversation
        # Text from the network is text, never markup.
        assert page.page.locator("#messages b").count() == 0


def _ad(room_id: str, sender: str, epoch: int) -> bytes:
    def lp(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return lp(room_id.encode()) + lp(sender.encode()) + struct.pack(">Q", epoch)


def _next_message(observer: WsClient, sender: str, epoch: int) -> dict[str, Any]:
    """Return the next `newMessage` from `sender` under `epoch` that `observer` receives."""
    while True:
        try:
            message = observer.recv(RECV_TIMEOUT)
        except Silent:
            raise AssertionError(f"no message from {sender} under epoch {epoch}") from None
        if (message["type"], message.get("from"), message.get("keyEpoch")) == (
            "newMessage",
            sender,
            epoch,
        ):
            return message


def test_kick_rotates(open_demo: OpenDemo, roomd: RoomdProcess) -> None:
    """After A kicks C the room rotates to epoch 2: B reads A's next text, C and the relay can't."""
    # Only admitted members get rotated keys: A has admitted both.
    a, b, c, _ = three_tabs(open_demo)
    a_aid, b_aid, c_aid = a.aid, b.aid, c.aid
    room_id = a.snapshot()["roomId"]
    a.send("before the kick")
    c.wait_message(a_aid, "before the kick")

    # A member of the room as the relay lets anyone be: it knows the room id, not the secret.
    observer = WsClient(roomd.url)
    try:
        observer.login("observer")
        joined = observer.request({"type": "joinChatroom", "roomId": room_id})
        assert joined["type"] == "joinSuccess", joined
        a.wait_members(a_aid, b_aid, c_aid, "observer")

        a.page.click(f'#members button.kick[data-aid="{c_aid}"]')
        expect(c.page.locator('#messages li.event[data-kind="kicked"]')).to_have_count(1)
        for page in (a, b):
            page.wait_key(2)
            rotation = page.page.locator('#messages li.event[data-kind="rotation"][data-epoch="2"]')
            expect(rotation).to_have_text("key rotated to epoch 2")
            page.wait_members(a_aid, b_aid, "observer")

        secret_text = f"after the kick {secrets.token_hex(4)}"
        a.send(secret_text)
        b.wait_message(a_aid, secret_text)
        seen = _next_message(observer, a_aid, 2)
    finally:
        observer.close()

    # C's page is out of the room and holds no key of epoch 2.
    assert all(text != secret_text for _, text in c.texts())
    c_keys = c.snapshot()["keys"]
    assert "2" not in c_keys and "1" in c_keys
    # The relay carried ciphertext only; C's keys do not open it, B's does.
    ciphertext, iv = base64.b64decode(seen["ciphertext"]), base64.b64decode(seen["iv"])
    assert secret_text.encode() not in ciphertext and len(ciphertext) % 256 == 16
    for key in c_keys.values():
        for epoch in (1, 2):
            with pytest.raises(InvalidTag):
                AESGCM(bytes.fromhex(key)).decrypt(iv, ciphertext, _ad(room_id, a_aid, epoch))
    b_key = bytes.fromhex(b.snapshot()["keys"]["2"])
    body = json.loads(AESGCM(b_key).decrypt(iv, ciphertext, _ad(room_id, a_aid, 2)))
    assert body["text"] == secret_text


def test_when_the_host_leaves_the_new_host_rotates_and_admits_the_rest(open_demo: OpenDemo) -> None:
    """A leaves: B (present longest) becomes host and rotates; C knocks to B and gets the key."""
    a = open_demo()
    link = a.create_room()
    b, c = open_demo(link), open_demo(link)
    a_aid, b_aid, c_aid = a.aid, b.aid, c.aid
    for page in (b, c):
        page.wait_key(1)
    a.page.click("#leave")
    expect(a.page.locator("#lobby")).to_be_visible()
    for page in (b, c):
        page.wait_members(b_aid, c_aid)
        expect(page.page.locator("#members li[data-host=true]")).to_have_attribute(
            "data-aid", b_aid
        )
        page.wait_key(2)
    expect(b.page.locator(f'#members li[data-aid="{c_aid}"]')).to_have_attribute(
        "data-admitted", "true"
    )
    c.send("to the new host")
    b.wait_message(c_aid, "to the new host")
    b.send("from the new host")
    c.wait_message(b_aid, "from the new host")
    assert a_aid not in b.members()


def test_a_message_without_the_current_key_waits_for_it(open_demo: OpenDemo) -> None:
    """C misses a rotation: its message is refused (conflict), kept, and sent once the key comes."""
    held: list[str | bytes] = []
    holding = {"on": False}
    routes: list[WebSocketRoute] = []

    def hold_rotations(page: Page) -> None:
        """Route C's WebSocket through the test, which can hold back its key events."""

        def route(ws: WebSocketRoute) -> None:
            routes.append(ws)
            server = ws.connect_to_server()

            def to_page(message: str | bytes) -> None:
                kind = json.loads(message).get("type")
                if holding["on"] and kind in ("roomKeyUpdated", "signal"):
                    held.append(message)
                else:
                    ws.send(message)

            server.on_message(to_page)
            ws.on_message(server.send)

        page.route_web_socket(re.compile(r"/v1$"), route)

    a = open_demo()
    link = a.create_room()
    b = open_demo(link)
    c = open_demo(link, prepare=hold_rotations)
    b_aid, c_aid = b.aid, c.aid
    for page in (b, c):
        page.wait_key(1)
    a.page.wait_for_function(
        "(aids) => aids.every((aid) => window.roomdDemo.snapshot().admitted.includes(aid))",
        arg=[b_aid, c_aid],
    )
    holding["on"] = True
    a.page.click(f'#members button.kick[data-aid="{b_aid}"]')
    a.wait_key(2)
    # C has not heard of epoch 2: it sends under epoch 1, the relay refuses it with conflict.
    c.send("sent during the rotation")
    c.page.wait_for_function("() => window.roomdDemo.snapshot().keyEpoch === 2")
    expect(c.page.locator("#outbox")).to_contain_text("1 message(s) waiting for the key of epoch 2")
    assert c.snapshot()["outbox"] == 1
    holding["on"] = False
    assert [json.loads(m)["type"] for m in held] == ["roomKeyUpdated", "signal"]
    for message in held:
        routes[-1].send(message)
    c.wait_key(2)
    a.wait_message(c_aid, "sent during the rotation")
    expect(c.page.locator("#outbox")).to_have_text("")
    assert a.texts().count((c_aid, "sent during the rotation")) == 1


def test_page_runs_under_its_csp_without_violations(open_demo: OpenDemo) -> None:
    """The page creates, joins and chats under its policy; its script and style match the hashes."""
    a = open_demo()
    link = a.create_room()
    b = open_demo(link)
    b.wait_key(1)
    b.send("under the policy")
    a.wait_message(b.aid, "under the policy")
    policy = a.page.evaluate(
        """async () => {
             const hash = async (text) => {
               const data = new TextEncoder().encode(text);
               const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
               return "'sha256-" + btoa(String.fromCharCode(...digest)) + "'";
             };
             return {
               script: await hash(document.querySelector("script").textContent),
               style: await hash(document.querySelector("style").textContent),
             };
           }"""
    )
    response = a.page.request.get(a.page.url.split("#")[0])
    header = response.headers["content-security-policy"]
    assert f"script-src {policy['script']};" in header
    assert f"style-src {policy['style']};" in header
    # The fixture checks, after the test, that neither tab saw a violation or a script error.
    for page in (a, b):
        assert page.violations() == []


def test_the_policy_refuses_what_the_page_does_not_use(
    browser: Browser, roomd: RoomdProcess
) -> None:
    """An injected inline script, a style attribute and a foreign fetch are refused and reported."""
    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.add_init_script(WATCH_CSP)
        page.goto(f"{roomd.api_url}/demo")
        demo = DemoPage(page)
        demo.wait_online()
        outcome = page.evaluate(
            """async () => {
                 const script = document.createElement("script");
                 script.textContent = "window.injected = true";
                 document.body.append(script);
                 document.body.setAttribute("style", "background: red");
                 let fetched = true;
                 try { await fetch("http://198.51.100.7/"); } catch (err) { fetched = false; }
                 await new Promise((resolve) => setTimeout(resolve, 0));
                 return { injected: window.injected === true, fetched,
                          background: getComputedStyle(document.body).backgroundColor };
               }"""
        )
        assert outcome == {"injected": False, "fetched": False, "background": "rgba(0, 0, 0, 0)"}
        page.wait_for_function("() => window.__cspViolations.length >= 3")
        directives = {v["directive"] for v in demo.violations()}
        assert directives == {"script-src-elem", "style-src-attr", "connect-src"}
    finally:
        context.close()


def test_a_guest_hosts_at_most_three_rooms_and_may_try_again(open_demo: OpenDemo) -> None:
    """--demo's max-rooms-per-aid is 3: a fourth room is refused, shown, and Create stays usable."""
    demo = open_demo()
    for _ in range(3):
        demo.create_room()
        demo.page.click("#leave")
        expect(demo.page.locator("#lobby")).to_be_visible()
    demo.wait_online()
    demo.page.click("#create")
    status = demo.page.locator("#status")
    expect(status).to_have_attribute("data-state", "error")
    expect(status).to_contain_text("tooManyRooms")
    expect(demo.page.locator("#create")).to_be_enabled()
    assert demo.snapshot()["roomId"] is None
