"""The demo page (WebCrypto) and the Python SDK in one room read each other's messages.

The SDK runs on its own event loop in a thread (an anyio blocking portal), the
page in chromium through Playwright's sync API; both talk to one real
`roomd serve --demo`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from roomd.client.secure import SecureClient, connect_secure
from roomd.client.secure_room import Admitted, Message

from ..e2e_support import RoomdProcess, token
from .conftest import OpenDemo

pytestmark = pytest.mark.e2e

WAIT = 10.0


@contextmanager
def sdk_client(roomd: RoomdProcess, aid: str) -> Iterator[tuple[BlockingPortal, SecureClient]]:
    """Run a SecureClient for `aid` on an event loop in a thread; yield its portal and it."""
    with start_blocking_portal(backend="trio") as portal:
        manager = portal.wrap_async_context_manager(connect_secure(roomd.url, token=token(aid)))
        with manager as client:
            yield portal, client


def next_event(
    portal: BlockingPortal, client: SecureClient, kind: type, test: Callable[..., bool]
) -> object:
    """Return the client's next event of `kind` passing `test`, within `WAIT` seconds."""

    async def wait() -> object:
        with anyio.fail_after(WAIT):
            while True:
                event = await client.next_event(kind)
                if test(event):
                    return event

    return portal.call(wait)


def test_a_page_hosts_and_the_sdk_joins_by_its_link(
    open_demo: OpenDemo, roomd: RoomdProcess
) -> None:
    """The page creates the room; the SDK joins by the page's http link; both read both."""
    page = open_demo()
    link = page.create_room()
    assert link.startswith(f"{roomd.api_url}/demo#")
    aid = page.aid  # read here: the matcher below runs on the SDK's thread, away from Playwright
    with sdk_client(roomd, "python") as (portal, python):
        room = portal.call(python.join, link)
        page.wait_members(aid, "python")
        portal.call(python.send, room, "hello from python ✓")
        page.wait_message("python", "hello from python ✓")
        page.send("hello from the browser 🌍")
        got = next_event(portal, python, Message, lambda m: m.sender == aid)
        assert isinstance(got, Message) and got.text == "hello from the browser 🌍"


def test_the_sdk_hosts_and_a_page_joins_by_its_link(
    open_demo: OpenDemo, roomd: RoomdProcess
) -> None:
    """The SDK creates the room and admits the page's knock; both read both."""
    with sdk_client(roomd, "python") as (portal, python):
        room = portal.call(python.create_room)
        link = python.invite_link(room, base_url=f"{roomd.api_url}/demo")
        page = open_demo(link)
        aid = page.aid
        next_event(portal, python, Admitted, lambda e: e.aid == aid)
        page.wait_key(1)
        page.send("the page writes")
        got = next_event(portal, python, Message, lambda m: m.sender == aid)
        assert isinstance(got, Message) and got.text == "the page writes"
        portal.call(python.send, room, "the SDK answers")
        page.wait_message("python", "the SDK answers")
