"""The browser demo's two routes (docs/demo.md), served only with `roomd serve --demo`.

- `GET /demo`: the one static page `demo.html` (inline script and style, no
  other resource), read once when the app is built, under a strict
  Content-Security-Policy that allows its inline script and style by their
  sha256 hashes and lets it connect only to this API ('self', for its token)
  and to this node's WebSocket URL.
- `POST /demo/token`: an anonymous token (`guest-...`, valid `TOKEN_TTL`) and
  the WebSocket URL to use it on; at most `TOKENS_PER_WINDOW` per client IP in
  any `TOKEN_WINDOW` seconds (core/window.py), else 429 `rateLimited` with
  `Retry-After`. An IPv6 client counts as its /64 (`token_limit_key`): one host
  usually holds a whole /64, so its single addresses would be no limit.

Neither needs the API key: anyone who reaches the API may try roomd, which is
why the demo is for trying roomd and not for production.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import ipaddress
import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from roomd.api.body import error_response, json_response, read_json_object
from roomd.core.admission import Network, client_ip
from roomd.core.window import SlidingWindow
from roomd.errors import ApiError, ErrorCode

PAGE = "demo.html"
# How long a demo token lives: a visit, not a day.
TOKEN_TTL = 3600
TOKENS_PER_WINDOW = 5
TOKEN_WINDOW = 60.0
# Client IPs whose token counts are kept at once (core/window.py: the state is bounded).
TRACKED_IPS = 4096
# The IPv6 prefix one token count covers: a site or host is typically given a whole /64.
IPV6_PREFIX = 64
# Listener hosts that are no address a browser can connect to: the page then
# connects to the host it reached the API on, at the WebSocket port.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")
# Headers of the page besides its Content-Security-Policy.
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

IssueToken = Callable[[str, int], dict[str, Any]]


@attrs.frozen(kw_only=True)
class DemoSettings:
    """What the demo needs to know of the node: where its WebSocket listener is.

    `trusted_proxies` are the node's (`--trusted-proxy`): behind one, the token
    limit counts the client `X-Forwarded-For` names. `clock` is monotonic
    seconds, for the token limit.
    """

    ws_host: str
    ws_port: int
    tls: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    clock: Callable[[], float] = time.monotonic

    def ws_url(self, request_host: str | None) -> str | None:
        """Return the WebSocket URL a page loaded through `request_host` connects to.

        The listener's own host, or, when it listens on a wildcard address, the
        host of the request (`Host`); None when that is missing or not a host name
        or IP address (the request is then refused).
        """
        host = self.ws_host
        if host in WILDCARD_HOSTS:
            if request_host is None or not _HOSTNAME.fullmatch(request_host):
                return None
            host = request_host
        if ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.ws_port}/v1"


def inline_hash(page: str, tag: str) -> str:
    """Return the CSP source `'sha256-...'` of the page's one inline `<tag>` element.

    Raises:
        ValueError: the page has no `<tag>` element, or more than one.
    """
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    if len(bodies) != 1:
        raise ValueError(f"the demo page has {len(bodies)} <{tag}> elements, not 1")
    digest = hashlib.sha256(bodies[0].encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def connect_source(ws_url: str) -> str:
    """Return the CSP source that lets the page open `ws_url`.

    The URL itself, but for an IPv6 literal host, which CSP source expressions
    cannot name (browsers ignore `ws://[::1]:8765/v1`): then any host at that
    scheme, port and path.
    """
    scheme, _, rest = ws_url.partition("://")
    if not rest.startswith("["):
        return ws_url
    port_and_path = rest[rest.index("]") + 1 :]
    return f"{scheme}://*{port_and_path}"


def content_security_policy(script_hash: str, style_hash: str, ws_url: str) -> str:
    """Return the page's policy: nothing but its inline script and style, 'self' and `ws_url`."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {script_hash}",
            f"style-src {style_hash}",
            f"connect-src 'self' {connect_source(ws_url)}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def token_limit_key(ip: str) -> str:
    """Return what the token limit counts `ip` under: an IPv6 address's /64, else `ip`.

    An IPv4 address (an IPv4-mapped IPv6 one included) is itself; a string that is
    no IP address (a test client's name) is counted as it is.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def guest_aid() -> str:
    """Return a new anonymous AID: `guest-` and 10 random hex digits."""
    return "guest-" + secrets.token_hex(5)


def demo_routes(settings: DemoSettings, issue_token: IssueToken) -> list[Route]:
    """Return the routes of the demo; `issue_token(aid, ttl)` mints as `POST /v1/tokens` does.

    Reads the page (package data of `roomd.api`) and hashes its inline script
    and style once, here.
    """
    page = importlib.resources.files("roomd.api").joinpath(PAGE).read_bytes()
    text = page.decode()
    script_hash, style_hash = inline_hash(text, "script"), inline_hash(text, "style")
    tokens = SlidingWindow(TOKENS_PER_WINDOW, TOKEN_WINDOW, TRACKED_IPS)

    def ws_url_or_400(request: Request) -> str:
        ws_url = settings.ws_url(request.url.hostname)
        if ws_url is None:
            raise ApiError(ErrorCode.BAD_REQUEST, "the Host header names no host to connect to")
        return ws_url

    async def demo_page(request: Request) -> Response:
        try:
            ws_url = ws_url_or_400(request)
        except ApiError as exc:
            return error_response(exc)
        headers = {
            "Content-Security-Policy": content_security_policy(script_hash, style_hash, ws_url),
            **PAGE_HEADERS,
        }
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def demo_token(request: Request) -> Response:
        try:
            ws_url = ws_url_or_400(request)
            await read_json_object(request)  # none is needed; read so none is left unread
        except ApiError as exc:
            return error_response(exc)
        peer = request.client.host if request.client is not None else ""
        forwarded = request.headers.getlist("x-forwarded-for")
        ip = client_ip(peer, forwarded, settings.trusted_proxies)
        wait = tokens.take(token_limit_key(ip), settings.clock())
        if wait is not None:
            refusal = ApiError(
                ErrorCode.RATE_LIMITED,
                f"at most {TOKENS_PER_WINDOW} demo tokens per client IP (IPv6: per /64)"
                f" in {TOKEN_WINDOW:g} seconds",
            )
            response = error_response(refusal)
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        body = {**issue_token(guest_aid(), TOKEN_TTL), "url": ws_url}
        response = json_response(body, 201)
        response.headers["Cache-Control"] = "no-store"
        return response

    return [
        Route("/demo", demo_page, methods=["GET"]),
        Route("/demo/token", demo_token, methods=["POST"]),
    ]
