"""Settings of `roomd serve`: flags, then `ROOMD_*` variables, then defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from roomd import PROTOCOL_NAME
from roomd.core.admission import Network, parse_networks
from roomd.core.connection import ConnectionLimits
from roomd.core.history import HistoryPolicy
from roomd.errors import ConfigError

# The rooms a `--demo` server holds when `--max-rooms` is not given: its page mints
# tokens for anyone who can reach the API, so the room count must not grow unbounded.
DEMO_MAX_ROOMS = 100
# Likewise `--max-rooms-per-aid` and `--room-ttl` when not given: a guest token is free,
# so one may host few rooms, and an empty room is gone within the hour (not the day).
DEMO_MAX_ROOMS_PER_AID = 3
DEMO_ROOM_TTL = 3600.0


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of a running roomd; defaults are PROTOCOL.md's."""

    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path("roomd-data")
    max_conns_per_ip: int = 5
    max_connections: int = 0
    trusted_proxies: tuple[Network, ...] = ()
    allowed_origins: frozenset[str] = frozenset()
    rate: float = 10.0
    burst: float = 30.0
    handshake_timeout: float = 5.0
    auth_timeout: float = 10.0
    heartbeat_interval: float = 25.0
    heartbeat_timeout: float = 60.0
    room_ttl: float = 24 * 3600.0
    max_members: int = 256
    max_rooms_per_conn: int = 32
    max_rooms_per_aid: int = 64
    max_rooms: int = 0
    max_frame: int = 128 * 1024
    send_queue: int = 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    api: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = 8766
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    # Serve the browser demo (`GET /demo`, `POST /demo/token`) on the API; docs/demo.md.
    demo: bool = False
    store: str = "sqlite"
    history_size: int = 1000
    history_ttl: float = 24 * 3600.0
    recovery_limit: int = 500
    # How long shutdown waits for clients to answer close 1001 before it hangs up.
    close_timeout: float = 2.0
    # Redis URLs of the cluster (CLUSTER.md); none: this node runs alone.
    cluster: tuple[str, ...] = ()
    # This node's name in a cluster; empty: a random one, chosen at start.
    node_id: str = ""
    cluster_timeout: float = 2.0
    # Processes serving on this machine (`--workers`); each a full cluster node.
    workers: int = 1
    # Set by the supervisor for its workers: listen with SO_REUSEPORT on a shared port.
    reuse_port: bool = False

    @property
    def tls(self) -> bool:
        """True when the listener speaks wss (a certificate and key are set)."""
        return self.tls_cert is not None

    def ws_url(self, port: int) -> str:
        """Return the WebSocket URL of this config's listener bound to `port`."""
        scheme = "wss" if self.tls else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}/v1"

    def connection_limits(self) -> ConnectionLimits:
        """Return the settings the rules of every connection apply."""
        return ConnectionLimits(
            protocol=PROTOCOL_NAME,
            auth_timeout=self.auth_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            rate=self.rate,
            burst=self.burst,
            max_frame=self.max_frame,
            max_members=self.max_members,
            max_rooms_per_conn=self.max_rooms_per_conn,
            max_rooms_per_aid=self.max_rooms_per_aid,
            history_size=self.history_size,
            recovery_limit=self.recovery_limit,
        )

    def history_policy(self) -> HistoryPolicy:
        """Return what each room's history keeps and how far a join may recover."""
        return HistoryPolicy(
            size=self.history_size,
            ttl_ms=round(self.history_ttl * 1000),
            recovery_limit=self.recovery_limit,
        )


# (name, type, help). The flag is --name-with-dashes; the variable ROOMD_NAME.
SETTINGS: tuple[tuple[str, type, str], ...] = (
    ("host", str, "address to listen on"),
    ("port", int, "WebSocket port (0 = a free port)"),
    ("data_dir", Path, "directory for the token secret and the room store"),
    ("max_conns_per_ip", int, "open connections per client IP (0 = no limit)"),
    ("max_connections", int, "open WebSocket connections on this server (0 = no limit)"),
    ("rate", float, "messages per second a connection's bucket drains"),
    ("burst", float, "size of a connection's leaky bucket"),
    ("handshake_timeout", float, "seconds a new TCP connection has for its whole upgrade request"),
    ("auth_timeout", float, "seconds a new connection has to authenticate"),
    ("heartbeat_interval", float, "seconds between server pings"),
    ("heartbeat_timeout", float, "seconds of silence before close 4002"),
    ("room_ttl", float, "seconds an empty room lives"),
    ("max_members", int, "AIDs per room"),
    ("max_rooms_per_conn", int, "rooms one connection may be in"),
    ("max_rooms_per_aid", int, "rooms one AID may host, across its connections (0 = no limit)"),
    ("max_rooms", int, "rooms on this server (0 = no limit)"),
    ("max_frame", int, "largest client frame in bytes (larger: close 1009)"),
    ("send_queue", int, "outbound messages queued per connection before close 4003"),
    ("tls_cert", Path, "PEM certificate chain: serve wss"),
    ("tls_key", Path, "PEM private key of --tls-cert"),
    ("api_host", str, "address of the REST server API"),
    ("api_port", int, "port of the REST server API (0 = a free port)"),
    ("api_tls_cert", Path, "PEM certificate chain: serve the API over https"),
    ("api_tls_key", Path, "PEM private key of --api-tls-cert"),
    ("store", str, "room store: sqlite (in the data dir) or memory (nothing survives)"),
    ("history_size", int, "newest messages kept per room (0 = history off)"),
    ("history_ttl", float, "seconds a message stays in history (0 = no age limit)"),
    ("recovery_limit", int, "most missed messages a join with 'since' replays"),
    ("node_id", str, "this node's name in a cluster (default: random, printed at start)"),
    ("cluster_timeout", float, "seconds a room operation waits for Redis before 'unavailable'"),
    ("workers", int, "processes sharing the WebSocket port, each a cluster node (needs --cluster)"),
)
STORES = ("sqlite", "memory")
# (flag name, variable, help) of the repeatable flags; the variable is comma-separated.
REPEATABLE: tuple[tuple[str, str, str], ...] = (
    (
        "trusted_proxy",
        "ROOMD_TRUSTED_PROXIES",
        "CIDR of a reverse proxy whose X-Forwarded-For is believed",
    ),
    ("allowed_origin", "ROOMD_ALLOWED_ORIGINS", "an Origin allowed to connect (none given: any)"),
    (
        "cluster",
        "ROOMD_CLUSTER",
        "redis://HOST:PORT/DB of a Redis of the cluster: run as a node (repeat: rooms are"
        " spread over them; every node needs the same list in the same order)",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every setting; unset flags stay None so the environment can fill in."""
    for name, kind, help_text in SETTINGS:
        default = attrs.fields_dict(Config)[name].default
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=f"{help_text} [ROOMD_{name.upper()}, default {default}]",
        )
    parser.add_argument(
        "--no-api",
        dest="no_api",
        action="store_true",
        default=None,
        help="do not serve the REST server API [ROOMD_NO_API=1]",
    )
    parser.add_argument(
        "--demo",
        dest="demo",
        action="store_true",
        default=None,
        help="serve the browser demo at /demo on the API, with anonymous tokens for anyone"
        f" who reaches it; --max-rooms defaults to {DEMO_MAX_ROOMS}, --max-rooms-per-aid to"
        f" {DEMO_MAX_ROOMS_PER_AID} and --room-ttl to {DEMO_ROOM_TTL:g} [ROOMD_DEMO=1]",
    )
    for name, variable, help_text in REPEATABLE:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            action="append",
            default=None,
            help=f"{help_text}; repeatable [{variable}, comma-separated]",
        )


def from_sources(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Config:
    """Return the config from parsed flags, then `env`, then defaults; raise `ConfigError`."""
    values: dict[str, Any] = {}
    for name, kind, _ in SETTINGS:
        value = getattr(args, name, None)
        if value is None and f"ROOMD_{name.upper()}" in env:
            raw = env[f"ROOMD_{name.upper()}"]
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"ROOMD_{name.upper()}={raw!r} is not a {kind.__name__}"
                ) from None
        if value is not None:
            values[name] = value
    proxies = _list(getattr(args, "trusted_proxy", None), env.get("ROOMD_TRUSTED_PROXIES"))
    origins = _list(getattr(args, "allowed_origin", None), env.get("ROOMD_ALLOWED_ORIGINS"))
    try:
        values["trusted_proxies"] = parse_networks(proxies)
    except ValueError as exc:
        raise ConfigError(f"bad --trusted-proxy: {exc}") from None
    values["allowed_origins"] = frozenset(origins)
    values["cluster"] = tuple(_list(getattr(args, "cluster", None), env.get("ROOMD_CLUSTER")))
    values["api"] = not _switch(getattr(args, "no_api", None), env.get("ROOMD_NO_API"))
    values["demo"] = _switch(getattr(args, "demo", None), env.get("ROOMD_DEMO"))
    if values["demo"]:
        # Only when not given: an explicit flag or variable (0 = no limit included) stands.
        values.setdefault("max_rooms", DEMO_MAX_ROOMS)
        values.setdefault("max_rooms_per_aid", DEMO_MAX_ROOMS_PER_AID)
        values.setdefault("room_ttl", DEMO_ROOM_TTL)
    config = Config(**values)
    validate(config)
    return config


def _switch(flag: bool | None, variable: str | None) -> bool:
    if flag is not None:
        return flag
    return (variable or "").lower() in ("1", "true", "yes")


def _list(flags: Sequence[str] | None, variable: str | None) -> list[str]:
    if flags:
        return list(flags)
    return [item.strip() for item in (variable or "").split(",") if item.strip()]


def validate(config: Config) -> None:
    """Raise `ConfigError` naming the first setting that is out of range."""
    positive = (
        "cluster_timeout",
        "rate",
        "burst",
        "handshake_timeout",
        "auth_timeout",
        "heartbeat_interval",
        "heartbeat_timeout",
    )
    for name in (*positive, "room_ttl", "max_members", "max_rooms_per_conn", "send_queue"):
        if not getattr(config, name) > 0:  # written so that nan is refused too
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if config.max_frame < 1024:
        raise ConfigError("--max-frame must be at least 1024 bytes")
    if config.max_conns_per_ip < 0:
        raise ConfigError("--max-conns-per-ip must be 0 (no limit) or positive")
    for name in ("max_rooms_per_aid", "max_rooms"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 (no limit) or positive")
    if config.max_connections < 0:
        raise ConfigError("--max-connections must be 0 (no limit) or positive")
    if config.history_size < 0:
        raise ConfigError("--history-size must be 0 (history off) or positive")
    if not config.history_ttl >= 0:
        raise ConfigError("--history-ttl must be 0 (no age limit) or positive")
    if config.recovery_limit < 0:
        raise ConfigError("--recovery-limit must be 0 or positive")
    if not 0 <= config.port <= 65535:
        raise ConfigError("--port must be within 0..65535")
    if not 0 <= config.api_port <= 65535:
        raise ConfigError("--api-port must be within 0..65535")
    if config.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if config.workers > 1 and not config.cluster:
        raise ConfigError("--workers needs --cluster: the workers share their rooms through Redis")
    if len(set(config.cluster)) != len(config.cluster):
        raise ConfigError("--cluster names the same Redis twice")
    for url in config.cluster:
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"--cluster takes a redis:// URL, not {url!r}")
    if config.store not in STORES:
        raise ConfigError(f"--store must be one of {', '.join(STORES)}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if (config.api_tls_cert is None) != (config.api_tls_key is None):
        raise ConfigError("--api-tls-cert and --api-tls-key go together")
    if config.demo and not config.api:
        raise ConfigError(
            "--demo needs the server API: the demo page and its tokens are served by it"
            " (drop --no-api)"
        )
