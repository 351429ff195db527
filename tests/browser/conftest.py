"""Browser tests: Debian's chromium, driven by Playwright's sync API, against `roomd serve --demo`.

Nothing here skips: when chromium is missing the tests fail (CI installs it, see
the justfile's `_chromium`). Every page records the Content-Security-Policy
violations and script errors it sees, and a test fails at teardown if any page
saw one. Every wait is bounded by `TIMEOUT_MS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from ..e2e_support import RoomdProcess, roomd_processes

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 5000
# Runs before the page's own script in every document: counts CSP violations.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push({
    directive: event.effectiveDirective, blocked: event.blockedURI, sample: event.sample,
  });
});
"""


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless chromium for these tests (fails, never skips, when it cannot start).

    Package scope, not session: Playwright's sync API keeps an asyncio loop running
    in this thread while it is open, and later tests call `asyncio.run`.
    """
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def roomd(tmp_path: Path) -> Iterator[RoomdProcess]:
    """A `roomd serve --demo` process on free ports (its logs must hold no error)."""
    starter = roomd_processes(tmp_path)
    start = next(starter)
    yield start("--demo", "--store", "memory")
    next(starter, None)


class DemoPage:
    """One tab on the demo page, with the waits the tests need (each bounded)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.csp_console: list[str] = []
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.csp_console.append(message.text)
        if message.type == "error":
            self.errors.append(message.text)

    def snapshot(self) -> dict[str, Any]:
        """Return the page's `window.roomdDemo.snapshot()`."""
        state: dict[str, Any] = self.page.evaluate("() => window.roomdDemo.snapshot()")
        return state

    @property
    def aid(self) -> str:
        """Return the guest AID the page got from `POST /demo/token`."""
        self.page.wait_for_function("() => window.roomdDemo.snapshot().aid !== null")
        return str(self.snapshot()["aid"])

    def violations(self) -> list[Any]:
        """Return the CSP violations the page has reported."""
        found: list[Any] = self.page.evaluate("() => window.__cspViolations")
        return found

    def wait_online(self) -> None:
        """Wait until the page is authenticated and may create a room."""
        expect(self.page.locator("#create")).to_be_enabled()

    def create_room(self) -> str:
        """Create a room and return its invite link."""
        self.wait_online()
        self.page.click("#create")
        self.wait_key(1)
        link = self.page.locator("#invite-link")
        expect(link).not_to_have_value("")
        return link.input_value()

    def wait_key(self, epoch: int) -> None:
        """Wait until the page holds the key of `epoch`, the room's current one."""
        expect(self.page.locator("#epoch")).to_have_attribute("data-epoch", str(epoch))
        expect(self.page.locator("#epoch")).to_have_attribute("data-has-key", "true")

    def send(self, text: str) -> None:
        """Type `text` and press the send button."""
        self.page.fill("#message-input", text)
        self.page.click("#send")

    def wait_message(self, sender: str, text: str) -> None:
        """Wait until the message list shows `text` from `sender`, decrypted."""
        self.page.wait_for_function(
            """([sender, text]) => [...document.querySelectorAll("#messages li.message")]
                 .some((li) => li.dataset.from === sender && li.dataset.text === text
                               && li.dataset.state === "ok")""",
            arg=[sender, text],
        )

    def texts(self) -> list[tuple[str, str]]:
        """Return (sender, text) of every decrypted message the list shows."""
        rows: list[list[str]] = self.page.evaluate(
            """() => [...document.querySelectorAll("#messages li.message[data-state=ok]")]
                 .map((li) => [li.dataset.from, li.dataset.text])"""
        )
        return [(sender, text) for sender, text in rows]

    def members(self) -> list[str]:
        """Return the AIDs the member list shows, in order."""
        aids: list[str] = self.page.evaluate(
            """() => [...document.querySelectorAll("#members li")].map((li) => li.dataset.aid)"""
        )
        return aids

    def wait_admitted(self, *aids: str) -> None:
        """Wait until this page, as host, has admitted every one of `aids`."""
        self.page.wait_for_function(
            "(aids) => aids.every((aid) => window.roomdDemo.snapshot().admitted.includes(aid))",
            arg=list(aids),
        )

    def wait_members(self, *aids: str) -> None:
        """Wait until the member list shows exactly `aids`, in that order."""
        self.page.wait_for_function(
            """(aids) => JSON.stringify([...document.querySelectorAll("#members li")]
                 .map((li) => li.dataset.aid)) === JSON.stringify(aids)""",
            arg=list(aids),
        )


OpenDemo = Callable[..., DemoPage]


@pytest.fixture
def open_demo(browser: Browser, roomd: RoomdProcess) -> Iterator[OpenDemo]:
    """Open demo tabs (each in its own browser context); check them for CSP violations after."""
    opened: list[DemoPage] = []
    contexts = []

    def open_demo(
        url: str | None = None, *, prepare: Callable[[Page], None] | None = None
    ) -> DemoPage:
        """Open the demo (or the invite link `url`); `prepare` sees the tab before it loads."""
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(WATCH_CSP)
        demo = DemoPage(page)
        opened.append(demo)
        if prepare is not None:
            prepare(page)
        assert roomd.api_url is not None
        response = page.goto(url or f"{roomd.api_url}/demo")
        assert response is not None and response.status == 200
        return demo

    expect.set_options(timeout=TIMEOUT_MS)
    yield open_demo
    try:
        for demo in opened:
            assert demo.violations() == [], demo.violations()
            assert demo.csp_console == [], demo.csp_console
            assert demo.errors == [], demo.errors
    finally:
        for context in contexts:
            context.close()


Prepare = Callable[[Page], None]


def three_tabs(
    open_demo: OpenDemo, *, prepare_a: Prepare | None = None, prepare_b: Prepare | None = None
) -> tuple[DemoPage, DemoPage, DemoPage, str]:
    """Open A, who creates a room, and B and C by its invite link, both admitted at epoch 1.

    Returns the three pages and the link.
    """
    a = open_demo(prepare=prepare_a)
    link = a.create_room()
    b = open_demo(link, prepare=prepare_b)
    c = open_demo(link)
    for page in (b, c):
        page.wait_key(1)
    a.wait_admitted(b.aid, c.aid)
    return a, b, c, link
