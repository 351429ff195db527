"""Serving the server API: hypercorn on trio, in the node's nursery."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette

# How long hypercorn lets requests in flight finish once the node drains.
GRACEFUL_TIMEOUT = 1.0


def _drop_hypercorn_eof_race(record: logging.LogRecord) -> bool:
    """Keep every API log record but hypercorn 0.18's harmless send_eof race.

    Its trio TCPServer closes a connection with `send_eof` outside its send lock;
    a client that hangs up right after a response makes that raise
    BusyResourceError, logged as "Error in ASGI Framework" though the response
    was delivered. Nothing else is filtered.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, trio.BusyResourceError)


def is_loopback(host: str) -> bool:
    """True when `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or 0.0.0.0-like wildcard: assume it is reachable


def clear_text_warning(host: str, *, tls: bool) -> str | None:
    """Return the start-up warning for an API on `host`, or None when it is safe.

    An API reachable beyond this machine without TLS sends its key in the clear.
    """
    if tls or is_loopback(host):
        return None
    return (
        f"the server API listens on {host} without TLS: its key travels in the clear"
        " (use --api-tls-cert and --api-tls-key)"
    )


def hypercorn_config(host: str, port: int, tls: tuple[Path, Path] | None = None) -> HypercornConfig:
    """Return hypercorn's settings for the API on `host:port`: no access log, roomd's logger.

    With `tls` (certificate chain, key) the API speaks https.
    """
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    if tls is not None:
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.accesslog = None
    api_log = logging.getLogger("roomd.api")
    api_log.addFilter(_drop_hypercorn_eof_race)
    config.errorlog = api_log
    return config


async def serve_api(
    app: Starlette,
    host: str,
    port: int,
    shutdown_trigger: Callable[..., Awaitable[None]],
    *,
    tls: tuple[Path, Path] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns; report the bound URLs through `task_status`.

    Logs a warning when the API is reachable beyond this machine without TLS:
    its key would travel in the clear.
    """
    warning = clear_text_warning(host, tls=tls is not None)
    if warning is not None:
        logging.getLogger("roomd.api").warning("%s", warning)
    await serve(
        app,  # type: ignore[arg-type]  # Starlette is ASGI; the stubs disagree
        hypercorn_config(host, port, tls),
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
