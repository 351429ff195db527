"""The demo's routes (roomd/api/demo.py), on the Starlette app in process: no sockets, a fake clock.

Requests are ASGI calls straight into the app built by `build_app`, so a test
chooses the client's address and drives the token limit's clock through
`DemoSettings.clock`. The page itself runs in chromium in tests/browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from importlib import resources
from typing import Any, cast

import attrs
import pytest

from roomd.api.app import build_app
from roomd.api.demo import TOKEN_TTL, DemoSettings, token_limit_key
from roomd.api.service import RoomService
from roomd.config import Config
from roomd.core.admission import parse_networks
from roomd.core.stats import LiveCounts, Stats
from roomd.core.token import verify_token
from roomd.node import demo_settings

from .test_app import Reply

API_KEY = "demo-test-api-key"
SECRET = "demo-test-token-secret-0123456789abcdef"
NOW_MS = 1_800_000_000_000
PAGE = resources.files("roomd.api").joinpath("demo.html").read_bytes()


class _NoRooms:
    """Just enough of a `RoomService` for routes that never touch a room."""

    draining = False

    def live_counts(self) -> LiveCounts:
        return LiveCounts(0, 0, 0)


@attrs.define
class Clock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def app(demo: DemoSettings | None) -> Any:
    """Return the API app, with the demo when `demo` is given."""
    return build_app(
        cast(RoomService, _NoRooms()),
        Stats(),
        api_key=API_KEY,
        token_secret=SECRET,
        wall_ms=lambda: NOW_MS,
        demo=demo,
    )


def settings(**overrides: Any) -> DemoSettings:
    """Return demo settings for a listener on 127.0.0.1:8765, with `overrides`."""
    return DemoSettings(**{"ws_host": "127.0.0.1", "ws_port": 8765, **overrides})


async def call(
    asgi: Any,
    method: str,
    path: str,
    *,
    client: str = "198.51.100.1",
    host: str = "127.0.0.1:8766",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> Reply:
    """Send one request into the ASGI app `asgi` and return its response."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", host.encode())]
        + [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": (client, 40000),
        "server": ("127.0.0.1", 8766),
    }
    sent = False
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await asgi(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return Reply(start["status"], response_headers, content)


class _PageParts(HTMLParser):
    """The page's inline script and style, and every attribute it uses."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.texts: dict[str, list[str]] = {"script": [], "style": []}
        self.attributes: list[tuple[str, str]] = []
        self.tags: set[str] = set()
        self._inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += [(tag, name) for name, _ in attrs]
        if tag in self.texts:
            self._inside = tag
            self.texts[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside is not None:
            self.texts[self._inside][-1] += data


def page_hash(tag: str) -> str:
    """Return the CSP hash source of the page's one inline `<tag>`, parsed independently."""
    parts = _PageParts()
    parts.feed(PAGE.decode())
    (text,) = parts.texts[tag]
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_demo_routes_are_unknown_routes_without_demo() -> None:
    """Without --demo, GET /demo and POST /demo/token answer exactly as an unknown route."""
    asgi = app(None)
    unknown = await call(asgi, "GET", "/no-such-route")
    assert unknown.status == 404
    for method, path in [("GET", "/demo"), ("POST", "/demo/token")]:
        reply = await call(asgi, method, path)
        assert (reply.status, reply.body) == (404, unknown.body)
        assert reply.json()["error"]["code"] == "notFound"


async def test_page_is_served_with_the_exact_policy_and_headers() -> None:
    """GET /demo serves the package's page, no key needed, under a CSP of its own hashes."""
    reply = await call(app(settings()), "GET", "/demo")
    assert reply.status == 200
    assert reply.body == PAGE
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["content-security-policy"] == (
        "default-src 'none'; "
        f"script-src {page_hash('script')}; "
        f"style-src {page_hash('style')}; "
        "connect-src 'self' ws://127.0.0.1:8765/v1; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["cache-control"] == "no-store"


def test_page_loads_nothing_but_itself() -> None:
    """The page has one inline script and style, and no URL, handler or style attribute."""
    parts = _PageParts()
    parts.feed(PAGE.decode())
    assert [len(parts.texts["script"]), len(parts.texts["style"])] == [1, 1]
    assert not parts.tags & {"link", "img", "iframe", "object", "embed", "form", "base"}
    for tag, name in parts.attributes:
        assert name not in ("src", "href", "action", "style", "srcset"), (tag, name)
        assert not name.startswith("on"), (tag, name)
    assert "innerHTML" not in PAGE.decode() and "eval(" not in PAGE.decode()


@pytest.mark.parametrize(
    ("overrides", "host", "url", "source"),
    [
        ({"tls": True}, "127.0.0.1:8766", "wss://127.0.0.1:8765/v1", None),
        ({"ws_host": "0.0.0.0"}, "chat.example.com:8766", "ws://chat.example.com:8765/v1", None),
        ({"ws_host": "localhost"}, "127.0.0.1:8766", "ws://localhost:8765/v1", None),
        # CSP cannot name an IPv6 literal: any host, at the listener's scheme, port and path.
        ({"ws_host": "::1"}, "[::1]:8766", "ws://[::1]:8765/v1", "ws://*:8765/v1"),
        (
            {"ws_host": "::", "tls": True},
            "[2001:db8::5]:443",
            "wss://[2001:db8::5]:8765/v1",
            "wss://*:8765/v1",
        ),
    ],
)
async def test_page_connects_to_this_nodes_websocket_url(
    overrides: dict[str, Any], host: str, url: str, source: str | None
) -> None:
    """connect-src and the token's url name the listener (a wildcard one: the request's host)."""
    asgi = app(settings(**overrides))
    page = await call(asgi, "GET", "/demo", host=host)
    policy = page.headers["content-security-policy"]
    assert f"connect-src 'self' {source or url};" in policy
    token = await call(asgi, "POST", "/demo/token", host=host)
    assert token.json()["url"] == url


async def test_a_wildcard_listener_never_puts_a_bad_host_header_in_the_policy() -> None:
    """Behind a wildcard listener a malformed Host names the server's address; an odd one is 400."""
    asgi = app(settings(ws_host="0.0.0.0"))
    # Starlette replaces a Host that does not parse with the address the request came in on.
    page = await call(asgi, "GET", "/demo", host="evil; script-src *")
    assert page.status == 200
    assert "connect-src 'self' ws://127.0.0.1:8765/v1;" in page.headers["content-security-policy"]
    assert "evil" not in page.headers["content-security-policy"]
    for method, path in [("GET", "/demo"), ("POST", "/demo/token")]:
        reply = await call(asgi, method, path, host="under_score.example")
        assert reply.status == 400
        assert reply.json()["error"]["code"] == "badRequest"


async def test_token_is_a_guest_token_valid_for_its_aid() -> None:
    """POST /demo/token, with no key, gives 201 {aid, token, expiresAt, url} for a new guest."""
    asgi = app(settings())
    first = await call(asgi, "POST", "/demo/token")
    assert first.status == 201
    body = first.json()
    assert set(body) == {"aid", "token", "expiresAt", "url"}
    assert re.fullmatch(r"guest-[0-9a-f]{10}", body["aid"])
    identity = verify_token(SECRET, body["token"], now=NOW_MS / 1000 + TOKEN_TTL - 1)
    assert (identity.aid, identity.expires_at) == (body["aid"], NOW_MS // 1000 + TOKEN_TTL)
    assert body["expiresAt"] == NOW_MS // 1000 + 3600
    assert body["url"] == "ws://127.0.0.1:8765/v1"
    second = (await call(asgi, "POST", "/demo/token")).json()
    assert second["aid"] != body["aid"]


async def test_sixth_token_from_one_ip_within_a_minute_is_429_until_the_window_passes() -> None:
    """Five tokens per client IP in any 60 s; the sixth is 429 rateLimited with Retry-After."""
    clock = Clock()
    asgi = app(settings(clock=clock))
    for _ in range(5):
        assert (await call(asgi, "POST", "/demo/token")).status == 201
        clock.now += 1  # the five at 1000, 1001, ..., 1004
    clock.now = 1010.0
    refused = await call(asgi, "POST", "/demo/token")
    assert refused.status == 429
    error = refused.json()["error"]
    assert error["code"] == "rateLimited" and "5 demo tokens" in error["message"]
    assert refused.headers["retry-after"] == "50"  # the first leaves the window at 1060
    assert (await call(asgi, "POST", "/demo/token", client="198.51.100.2")).status == 201
    clock.now = 1059.9
    assert (await call(asgi, "POST", "/demo/token")).status == 429
    clock.now = 1060.0
    assert (await call(asgi, "POST", "/demo/token")).status == 201
    assert (await call(asgi, "POST", "/demo/token")).status == 429  # the second leaves at 1061
    clock.now = 1125.0
    for _ in range(5):
        assert (await call(asgi, "POST", "/demo/token")).status == 201


async def test_behind_a_trusted_proxy_the_limit_counts_the_forwarded_client() -> None:
    """Through a trusted proxy each forwarded client has its own five; others cannot forge one."""
    asgi = app(settings(trusted_proxies=parse_networks(["10.0.0.0/8"])))
    for client in ("203.0.113.1", "203.0.113.2"):
        forwarded = (("X-Forwarded-For", client),)
        replies = [
            await call(asgi, "POST", "/demo/token", client="10.0.0.1", headers=forwarded)
            for _ in range(6)
        ]
        assert [r.status for r in replies] == [201] * 5 + [429]
    spoofed = [
        await call(
            asgi,
            "POST",
            "/demo/token",
            client="198.51.100.9",
            headers=(("X-Forwarded-For", f"203.0.113.{i}"),),
        )
        for i in range(10, 16)
    ]
    assert [r.status for r in spoofed] == [201] * 5 + [429]


async def test_an_ipv6_client_counts_as_its_64_and_an_ipv4_one_as_its_address() -> None:
    """Addresses of one IPv6 /64 share five tokens a minute; another /64 and IPv4 count apart."""
    asgi = app(settings())
    one_64 = [f"2001:db8:1:2:{i:x}::{i + 1:x}" for i in range(6)]
    replies = [await call(asgi, "POST", "/demo/token", client=ip) for ip in one_64]
    assert [r.status for r in replies] == [201] * 5 + [429]
    assert "per /64" in replies[-1].json()["error"]["message"]
    assert (await call(asgi, "POST", "/demo/token", client="2001:db8:1:3::1")).status == 201
    # Behind a trusted proxy the forwarded IPv6 client counts as its /64 too.
    proxied = app(settings(trusted_proxies=parse_networks(["10.0.0.0/8"])))
    forwarded = [
        await call(
            proxied,
            "POST",
            "/demo/token",
            client="10.0.0.1",
            headers=(("X-Forwarded-For", f"2001:db8:9:9::{i + 1:x}"),),
        )
        for i in range(6)
    ]
    assert [r.status for r in forwarded] == [201] * 5 + [429]
    # IPv4 addresses are counted one by one; an IPv4-mapped IPv6 address is its IPv4 one.
    for ip in ("198.51.100.7", "198.51.100.8"):
        assert (await call(asgi, "POST", "/demo/token", client=ip)).status == 201
    for _ in range(3):
        assert (await call(asgi, "POST", "/demo/token", client="198.51.100.7")).status == 201
    mapped = await call(asgi, "POST", "/demo/token", client="::ffff:198.51.100.7")
    assert mapped.status == 201  # the fifth of 198.51.100.7
    assert (await call(asgi, "POST", "/demo/token", client="198.51.100.7")).status == 429


def test_token_limit_key_is_the_64_of_ipv6_and_the_address_of_ipv4() -> None:
    """token_limit_key: IPv6 to its /64 (any spelling), IPv4 and mapped IPv4 to the address."""
    assert token_limit_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert token_limit_key("2001:0DB8:0001:0002::1") == "2001:db8:1:2::/64"
    assert token_limit_key("::1") == "::/64"
    assert token_limit_key("198.51.100.7") == "198.51.100.7"
    assert token_limit_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert token_limit_key("testclient") == "testclient"


async def test_guarded_routes_stay_guarded_with_the_demo() -> None:
    """With the demo on, every server API route but /healthz still needs the API key."""
    asgi = app(settings())
    for method, path in [("POST", "/v1/tokens"), ("GET", "/metrics"), ("GET", "/openapi.json")]:
        reply = await call(asgi, method, path)
        assert reply.status == 401, path
        keyed = await call(asgi, method, path, headers=(("Authorization", f"Bearer {API_KEY}"),))
        assert keyed.status in (200, 201), path


def test_the_node_gives_the_demo_its_listener_only_with_demo() -> None:
    """node.demo_settings is None without --demo, else the WebSocket host, port and scheme."""
    assert demo_settings(Config(), 8765) is None
    got = demo_settings(Config(demo=True, host="0.0.0.0"), 4242)
    assert got is not None
    assert (got.ws_host, got.ws_port, got.tls) == ("0.0.0.0", 4242, False)
