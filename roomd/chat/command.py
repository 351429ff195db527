"""`roomd chat`'s command line: its flags, the `ChatOptions` they make, and the run.

`add_chat_arguments` defines the flags on the `chat` subparser and
`run_chat` runs the chat the parsed flags describe:

- `--url` (default `DEFAULT_URL`) is where to connect; with a `ws://` invite
  link and no `--url`, the link without its fragment is;
- `--token`, or else a token minted for `--name` (default: the login name)
  with the token secret `roomd serve` keeps in `--data-dir`, minted afresh
  at every reconnect so that a long chat outlives a token;
- `--invite LINK` joins that room; without it the chat creates one.

`ROOMD_TOKEN` and `ROOMD_INVITE` stand in for `--token` and `--invite`, so
that neither secret need be in the command line, which any local user can
read (`ps`); a flag wins over its variable.

textual is imported only when a chat runs, so `roomd serve` does not load it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
import urllib.parse
from pathlib import Path

import attrs

from roomd.chat.printable import printable
from roomd.chat.slash import HELP
from roomd.client.invite import Invite, parse_invite
from roomd.core.token import DEFAULT_TTL, mint_token
from roomd.datadir import SECRET_ENV, SECRET_FILE, load_token_secret
from roomd.errors import ConfigError, ProtocolError

DEFAULT_URL = "ws://127.0.0.1:8765/v1"
DEFAULT_DATA_DIR = "roomd-data"
DATA_DIR_ENV = "ROOMD_DATA_DIR"
TOKEN_ENV = "ROOMD_TOKEN"
INVITE_ENV = "ROOMD_INVITE"
USAGE_STATUS = 2


class UsageError(Exception):
    """The flags ask for something `roomd chat` cannot do; the message says what."""


@attrs.frozen
class MintedToken:
    """A token source for the SDK: a fresh token of `aid`, signed with `secret`, per call."""

    aid: str
    secret: str = attrs.field(repr=False)
    ttl: float = DEFAULT_TTL

    def mint(self, now: float) -> str:
        """Return a token of `aid` valid for `ttl` seconds from `now` (Unix seconds).

        Raises `ProtocolError` when `aid` is not a valid AID.
        """
        return mint_token(self.secret, self.aid, now=now, ttl=self.ttl)[0]

    async def __call__(self) -> str:
        """Return a token valid from now: what the SDK calls at each (re)connection."""
        return self.mint(time.time())


@attrs.frozen
class ChatOptions:
    """What a chat connects to, as whom, and which room it joins (None: it creates one)."""

    url: str
    token: str | MintedToken = attrs.field(repr=False)
    invite: Invite | None = attrs.field(default=None, repr=False)


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """Define `roomd chat`'s flags on `parser`; a malformed `--invite` or `--url` fails parsing."""
    parser.description = (
        "An end-to-end-encrypted chat in the terminal: create a room and share its "
        "invite link, or join one with --invite."
    )
    parser.epilog = f"In the chat, {HELP}. More: docs/chat.md."
    parser.add_argument(
        "--url",
        type=_ws_url,
        default=None,
        help=f"roomd's WebSocket URL (default: the --invite ws:// link's, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"a token for roomd [{TOKEN_ENV}; default: mint one, see --data-dir]",
    )
    parser.add_argument(
        "--invite",
        type=_invite,
        default=None,
        metavar="LINK",
        help="join the room of this invite link (ws://HOST:PORT/v1#room=...&secret=... or "
        f"the demo page's http(s)://HOST:PORT/demo#...) instead of creating a room [{INVITE_ENV}]",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="without --token: mint a token with this roomd data dir's token secret "
        f"[{DATA_DIR_ENV}, default ./{DEFAULT_DATA_DIR}; {SECRET_ENV} wins when set]",
    )
    parser.add_argument(
        "--name",
        default=None,
        metavar="AID",
        help="without --token: the AID to mint a token for (default: the login name)",
    )


def options_from_args(args: argparse.Namespace) -> ChatOptions:
    """Return the options the parsed flags describe.

    Reads the token secret (never creates one: a new secret would match no
    running roomd). Raises `UsageError` for flags that contradict each other,
    a missing token secret, a `--name` that is no valid AID, or a malformed
    `ROOMD_INVITE`.
    """
    invite: Invite | None = args.invite
    if invite is None and os.environ.get(INVITE_ENV):
        try:
            invite = parse_invite(os.environ[INVITE_ENV])
        except ValueError as exc:
            # parse_invite's messages never quote the link, which holds the secret.
            raise UsageError(f"{INVITE_ENV}: {exc}") from None
    url: str | None = args.url
    if url is None:
        url = DEFAULT_URL
        if invite is not None and invite.url.lower().startswith(("ws://", "wss://")):
            url = invite.url
    minting = args.name is not None or args.data_dir is not None
    if args.token is not None:
        if minting:
            raise UsageError("--name and --data-dir mint a token: they do not go with --token")
        return ChatOptions(url, args.token, invite)
    # Asked to mint (--name, --data-dir), the chat does so whatever ROOMD_TOKEN holds.
    if not minting and os.environ.get(TOKEN_ENV):
        return ChatOptions(url, os.environ[TOKEN_ENV], invite)
    return ChatOptions(url, _minted_token(args), invite)


def run_chat(args: argparse.Namespace) -> None:
    """Run the chat the parsed flags describe until the user quits.

    Exits with status 2 and a one-line message for a usage error, with status
    1 and a one-line message when the chat cannot start (no connection, a
    refused token or join), never with a traceback for either.
    """
    try:
        options = options_from_args(args)
    except UsageError as exc:
        print(f"roomd chat: error: {printable(str(exc))}", file=sys.stderr)
        raise SystemExit(USAGE_STATUS) from None
    # Imported here: textual is for `roomd chat` only, not for every `roomd serve`.
    from roomd.chat.session import ChatError, chat

    try:
        status = asyncio.run(chat(options))
    except ChatError as exc:
        sys.exit(f"roomd chat: {printable(str(exc))}")
    except KeyboardInterrupt:
        sys.exit(130)
    if status:
        sys.exit(status)


def _minted_token(args: argparse.Namespace) -> MintedToken:
    data_dir: Path = args.data_dir or Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))
    secret_file = data_dir / SECRET_FILE
    if not os.environ.get(SECRET_ENV) and not secret_file.is_file():
        raise UsageError(
            f"no token secret: {secret_file} does not exist; give --token, or the "
            "--data-dir of the roomd serve to connect to"
        )
    try:
        secret = load_token_secret(data_dir)
    except (ConfigError, OSError) as exc:
        raise UsageError(f"no token secret: {exc}") from None
    try:
        aid = args.name or getpass.getuser()
    except (OSError, KeyError):
        raise UsageError("cannot tell the login name: give --name AID") from None
    token = MintedToken(aid, secret)
    try:
        token.mint(time.time())
    except ProtocolError as exc:
        raise UsageError(f"--name {aid!r}: {exc.message}") from None
    return token


def _invite(link: str) -> Invite:
    try:
        return parse_invite(link)
    except ValueError as exc:
        # parse_invite's messages never quote the link, which holds the secret.
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ws_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise argparse.ArgumentTypeError("not a URL") from None
    if parts.scheme.lower() not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"a ws:// or wss:// URL with a host, such as {DEFAULT_URL}"
        )
    if parts.fragment:
        raise argparse.ArgumentTypeError(
            "roomd's URL has no fragment: an invite link goes to --invite"
        )
    return url
