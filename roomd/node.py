"""One roomd process: the WebSocket daemon and, beside it, the server API.

This is where the layers meet. `Node.from_config` reads the data dir's secrets
and opens the configured store; `Node.run` starts the daemon's `Server`, then
serves the API on the `RoomControl` the server reports, so the daemon and the
API never import each other, and closes the store once both are done.

    Node.run
    └── node nursery
        ├── Server.run: the WebSocket daemon (roomd.daemon.server draws its tree)
        └── the server API: hypercorn on trio + the Starlette app (unless --no-api)

The API stops taking requests once the WebSocket drain is over, and the whole
node ends when the server has.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

from roomd.api.app import build_app
from roomd.api.demo import DemoSettings
from roomd.api.http import serve_api
from roomd.config import Config
from roomd.core.admission import IpCounts
from roomd.daemon.server import Running, Server
from roomd.datadir import API_KEY_ENV, SECRET_ENV, load_api_key, load_token_secret
from roomd.errors import ConfigError
from roomd.store import RoomStore
from roomd.store.memory import MemoryRoomStore
from roomd.store.sqlite import SqliteRoomStore


def open_store(kind: str, data_dir: Path) -> RoomStore:
    """Return the room store `kind` names: `sqlite` (in `data_dir`) or `memory`."""
    if kind == "sqlite":
        return SqliteRoomStore.in_data_dir(data_dir)
    return MemoryRoomStore()


def demo_settings(config: Config, port: int) -> DemoSettings | None:
    """Return what the demo page needs of a node listening on `port`; None without --demo.

    Warns when the API speaks https but the listener not wss: a browser refuses
    a `ws://` connection from an `https://` page (mixed content).
    """
    if not config.demo:
        return None
    if config.api_tls_cert is not None and not config.tls:
        logging.getLogger("roomd.node").warning(
            "--demo: the API is https but the WebSocket listener is not wss, so browsers"
            " will refuse the page's connection (give --tls-cert and --tls-key too)"
        )
    return DemoSettings(
        ws_host=config.host, ws_port=port, tls=config.tls, trusted_proxies=config.trusted_proxies
    )


@attrs.frozen
class Bound:
    """Where a started node listens: the WebSocket port, and the API's URL if served."""

    port: int
    api_url: str | None
    # The live server, for whoever started the node (tests read its rooms and sessions).
    running: Running


@attrs.define(eq=False)
class Node:
    """A roomd server and the API key that guards its server API (None: no API)."""

    server: Server
    api_key: str | None

    @classmethod
    def from_config(
        cls,
        config: Config,
        env: Mapping[str, str] = os.environ,
        ip_counts: IpCounts | None = None,
    ) -> Node:
        """Return the node of `config`: secrets and store from the data dir and environment.

        A cluster node takes its secrets from `env` only (every node needs the
        same ones) and raises `ConfigError` saying so when they are missing.
        """
        if config.cluster:
            return cls._cluster_node(config, env, ip_counts)
        server = Server(
            config=config,
            token_secret=load_token_secret(config.data_dir),
            store=open_store(config.store, config.data_dir),
        )
        return cls(server, load_api_key(config.data_dir) if config.api else None)

    @classmethod
    def _cluster_node(
        cls, config: Config, env: Mapping[str, str], ip_counts: IpCounts | None
    ) -> Node:
        needed = [SECRET_ENV] + ([API_KEY_ENV] if config.api else [])
        missing = [name for name in needed if not env.get(name)]
        if missing:
            raise ConfigError(
                f"a cluster node needs {' and '.join(missing)} in its environment: every node"
                " must share the token secret and API key, so none is read from or generated"
                " in the data dir"
            )
        import coredis  # only a cluster node loads it (roomd/daemon/server.py says why)

        server = Server(
            config=config,
            token_secret=env[SECRET_ENV],
            store=MemoryRoomStore(),  # Redis holds the rooms
            redis=[coredis.Redis.from_url(url) for url in config.cluster],
            node_id=config.node_id or secrets.token_hex(4),
            ip_counts=ip_counts,
        )
        return cls(server, env[API_KEY_ENV] if config.api else None)

    def shutdown(self) -> None:
        """Begin the graceful shutdown; `run` returns once it is done."""
        self.server.shutdown()

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
        *,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown()`; report where the node listens through `task_status`.

        Resource handling: the server's listeners, connections and rooms, the
        API's sockets, and last the room store, are closed before this returns.
        """
        try:
            await self._run(listeners, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.server.store.aclose()

    async def _run(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None,
        task_status: trio.TaskStatus[Bound],
    ) -> None:
        server = self.server
        config = server.config
        async with trio.open_nursery() as nursery:

            async def run_server(task_status: trio.TaskStatus[Running]) -> None:
                await server.run(listeners, task_status=task_status)
                nursery.cancel_scope.cancel()  # the API, if still finishing requests

            running: Running = await nursery.start(run_server)
            api_url = None
            if config.api and self.api_key is not None:
                app = build_app(
                    running.control,
                    server.stats,
                    api_key=self.api_key,
                    token_secret=server.token_secret,
                    wall_ms=server.wall_ms,
                    demo=demo_settings(config, running.port),
                )
                tls = None
                if config.api_tls_cert is not None and config.api_tls_key is not None:
                    tls = (config.api_tls_cert, config.api_tls_key)
                serve = partial(
                    serve_api,
                    app,
                    config.api_host,
                    config.api_port,
                    server.drained.wait,
                    tls=tls,
                )
                api_url = (await nursery.start(serve))[0]
            task_status.started(Bound(running.port, api_url, running))
