"""Serving the server API: hypercorn on trio, in the node's nursery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

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


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    """Return hypercorn's settings for the API on `host:port`: no access log, roomd's logger."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
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
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns; report the bound URLs through `task_status`."""
    await serve(
        app,  # type: ignore[arg-type]  # Starlette is ASGI; the stubs disagree
        hypercorn_config(host, port),
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
