"""The `roomd` command: `serve` runs the daemon, `token` mints a token, `api-key` prints the key."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from roomd import __version__
from roomd.chat.command import add_chat_arguments, run_chat
from roomd.config import Config, add_arguments, from_sources
from roomd.core.admission import IpCounts
from roomd.core.token import DEFAULT_TTL, mint_token
from roomd.datadir import load_api_key, load_token_secret
from roomd.errors import ConfigError, ProtocolError
from roomd.node import Node
from roomd.supervisor import supervise


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every `roomd` subcommand."""
    parser = argparse.ArgumentParser(prog="roomd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"roomd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the relay daemon")
    add_arguments(serve)
    serve.add_argument(
        "--log-level", default=os.environ.get("ROOMD_LOG_LEVEL", "INFO"), help="[ROOMD_LOG_LEVEL]"
    )
    token = commands.add_parser("token", help="print a token for an AID")
    token.add_argument("aid", help="the identity the token proves")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds it is valid")
    token.add_argument("--data-dir", type=Path, default=None, help="[ROOMD_DATA_DIR]")
    api_key = commands.add_parser("api-key", help="print the server API key")
    api_key.add_argument("--data-dir", type=Path, default=None, help="[ROOMD_DATA_DIR]")
    chat = commands.add_parser("chat", help="chat in an end-to-end-encrypted room")
    add_chat_arguments(chat)
    return parser


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard limit: one fd per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_node(config: Config, ip_counts: IpCounts | None = None) -> None:
    """Run one node until SIGINT or SIGTERM (a worker's per-IP count: `ip_counts`)."""
    raise_open_file_limit()
    try:
        trio.run(serve, config, ip_counts)
    except ConfigError as exc:
        sys.exit(f"roomd serve: {exc}")
    except OSError as exc:
        sys.exit(f"roomd serve: {exc}")


async def serve(config: Config, ip_counts: IpCounts | None = None) -> None:
    """Run the daemon until SIGINT or SIGTERM, then shut down gracefully."""
    node = Node.from_config(config, ip_counts=ip_counts)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(node.run)
            # What start-up made (modules, the app, restored rooms) lives as long as the
            # process: keep it out of every later garbage collection's scan.
            gc.freeze()
            print(f"listening {config.ws_url(bound.port)}", flush=True)
            if bound.api_url is not None:
                print(f"api {bound.api_url}", flush=True)
            if config.cluster:
                node_id = node.server.node_id
                print(f"node {node_id} cluster {len(config.cluster)} redis", flush=True)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logging.getLogger("roomd.cli").info("signal %d: stopping", signum)
                    node.shutdown()
                    return

            nursery.start_soon(stop_on_signal)


def _data_dir(args: argparse.Namespace) -> Path:
    return args.data_dir or Path(os.environ.get("ROOMD_DATA_DIR", "roomd-data"))


def main(argv: Sequence[str] | None = None) -> None:
    """Run `roomd` with `argv` (default: the process arguments)."""
    args = build_parser().parse_args(argv)
    if args.command == "chat":
        run_chat(args)
        return
    if args.command == "api-key":
        try:
            print(load_api_key(_data_dir(args)))
        except ConfigError as exc:
            sys.exit(f"roomd api-key: {exc}")
        return
    if args.command == "token":
        data_dir = _data_dir(args)
        try:
            token, _ = mint_token(
                load_token_secret(data_dir), args.aid, now=time.time(), ttl=args.ttl
            )
        except ProtocolError as exc:
            sys.exit(f"roomd token: {exc.message}")
        except ConfigError as exc:
            sys.exit(f"roomd token: {exc}")
        print(token)
        return
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = from_sources(args)
    except ConfigError as exc:
        sys.exit(f"roomd serve: {exc}")
    if config.workers > 1:
        try:
            supervise(config, args.log_level.upper(), run_node)
        except OSError as exc:
            sys.exit(f"roomd serve: {exc}")
        return
    run_node(config)
