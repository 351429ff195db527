"""`roomd chat`'s command line: which URL, which token, which room; and how it fails."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomd.chat.command import (
    DEFAULT_URL,
    MintedToken,
    UsageError,
    add_chat_arguments,
    options_from_args,
    run_chat,
)
from roomd.chat.session import ChatError, open_chat
from roomd.cli import main
from roomd.client.invite import invite_link
from roomd.core.token import verify_token
from tests.chat.support import until
from tests.e2e_support import RoomdProcess, clean_env, roomd_processes, token

DIR_SECRET = "a-data-dir-secret-0123456789abcdef0123456789"
ROOM = "Room_1"
WS_LINK = invite_link("ws://chat.example:9000/v1", ROOM, b"k" * 32)
DEMO_LINK = invite_link("https://chat.example/demo", ROOM, b"k" * 32)


@pytest.fixture(autouse=True)
def no_roomd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without the caller's ROOMD_TOKEN_SECRET, ROOMD_DATA_DIR, ROOMD_TOKEN, ROOMD_INVITE."""
    for name in ("ROOMD_TOKEN_SECRET", "ROOMD_DATA_DIR", "ROOMD_TOKEN", "ROOMD_INVITE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir holding a token secret, as `roomd serve` leaves it."""
    (tmp_path / "token-secret").write_text(DIR_SECRET)
    return tmp_path


def parse(*argv: str) -> argparse.Namespace:
    """Parse `roomd chat` arguments."""
    parser = argparse.ArgumentParser(prog="roomd chat")
    add_chat_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv, url",
    [
        ([], DEFAULT_URL),
        (["--url", "wss://other.example/v1"], "wss://other.example/v1"),
        (["--invite", WS_LINK], "ws://chat.example:9000/v1"),
        (["--invite", WS_LINK, "--url", "ws://127.0.0.1:1/v1"], "ws://127.0.0.1:1/v1"),
        (["--invite", DEMO_LINK], DEFAULT_URL),
        (["--invite", DEMO_LINK, "--url", "ws://chat.example/v1"], "ws://chat.example/v1"),
    ],
)
def test_the_url_comes_from_the_flag_the_link_or_the_default(
    argv: list[str], url: str, data_dir: Path
) -> None:
    """--url wins; else a ws:// invite link's own URL; else the default (a demo link has none)."""
    options = options_from_args(parse(*argv, "--data-dir", str(data_dir)))
    assert options.url == url
    if "--invite" in argv:
        assert options.invite is not None
        assert (options.invite.room_id, options.invite.secret) == (ROOM, b"k" * 32)
    else:
        assert options.invite is None


def test_data_dir_mints_a_token_with_its_secret(data_dir: Path) -> None:
    """Without --token, each connection gets a fresh token of --name signed by the dir's secret."""
    options = options_from_args(parse("--data-dir", str(data_dir), "--name", "dora"))
    assert isinstance(options.token, MintedToken)
    minted = asyncio.run(options.token())
    assert verify_token(DIR_SECRET, minted, now=time.time()).aid == "dora"
    assert DIR_SECRET not in repr(options.token)


def test_the_name_defaults_to_the_login_name(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --name the minted token is the login name's."""
    monkeypatch.setenv("LOGNAME", "zoe")
    options = options_from_args(parse("--data-dir", str(data_dir)))
    assert isinstance(options.token, MintedToken) and options.token.aid == "zoe"


def test_a_given_token_is_used_as_it_is() -> None:
    """--token is passed on untouched, and needs no data dir."""
    options = options_from_args(parse("--token", "tok.en"))
    assert options.token == "tok.en"
    assert "tok.en" not in repr(options)


def test_the_token_and_link_can_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """ROOMD_TOKEN and ROOMD_INVITE keep the secrets out of argv; a flag wins over each."""
    monkeypatch.setenv("ROOMD_TOKEN", "env.token")
    monkeypatch.setenv("ROOMD_INVITE", WS_LINK)
    options = options_from_args(parse())
    assert options.token == "env.token"
    assert options.invite is not None and options.invite.room_id == ROOM
    assert options.url == "ws://chat.example:9000/v1"
    flags = options_from_args(parse("--token", "flag.token", "--invite", DEMO_LINK))
    assert flags.token == "flag.token"
    assert flags.invite is not None and flags.invite.url == "https://chat.example/demo"
    # Asked to mint, the chat mints: ROOMD_TOKEN does not contradict --name.
    minted = options_from_args(parse("--name", "bob", "--data-dir", str(data_dir)))
    assert isinstance(minted.token, MintedToken) and minted.token.aid == "bob"


def test_a_malformed_link_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad ROOMD_INVITE is named in the error, and its secret is not quoted."""
    monkeypatch.setenv("ROOMD_INVITE", "ws://h/v1#room=r&secret=" + "x" * 10)
    with pytest.raises(UsageError, match="ROOMD_INVITE: an invite link") as refused:
        options_from_args(parse("--token", "t"))
    assert "x" * 10 not in str(refused.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--token", "t", "--name", "bob"], "do not go with --token"),
        (["--name", "a\x00b"], "printable"),
        (["--data-dir", "{missing}"], "missing/token-secret does not exist"),
    ],
)
def test_usage_errors_say_what_is_wrong(
    argv: list[str], message: str, data_dir: Path, tmp_path: Path
) -> None:
    """Contradicting flags, a bad --name or a dir without a secret are usage errors."""
    argv = [arg.format(missing=tmp_path / "missing") for arg in argv]
    if "--data-dir" not in argv:
        argv += ["--data-dir", str(data_dir)]
    with pytest.raises(UsageError, match=message):
        options_from_args(parse(*argv))
    assert not (tmp_path / "missing").exists(), "a secret was made up for a dir without one"


def test_run_chat_exits_2_on_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error ends `roomd chat` with status 2 and one line on stderr."""
    with pytest.raises(SystemExit) as exited:
        run_chat(parse("--data-dir", str(tmp_path)))
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("roomd chat: error: no token secret: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--invite", "ws://h/v1#room=r&secret=" + "x" * 10], "argument --invite: an invite link"),
        (["--invite", "ws://h/v1"], "argument --invite: an invite link has a fragment"),
        (["--url", "http://h/v1"], "argument --url: a ws:// or wss:// URL"),
    ],
)
def test_roomd_chat_refuses_bad_links_and_urls(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`roomd chat` with a bad invite link or URL exits 2 with a message, not the secret."""
    with pytest.raises(SystemExit) as exited:
        main(["chat", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"roomd chat: error: {message}" in err
    assert "x" * 10 not in err


def test_a_bad_link_exits_2_without_a_traceback() -> None:
    """The real command, a bad --invite: status 2, a one-line reason, no traceback."""
    link = "ws://127.0.0.1:1/v1#room=r&secret=" + "x" * 42
    done = subprocess.run(
        [sys.executable, "-m", "roomd", "chat", "--invite", link, "--token", "t"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(None),
    )
    assert done.returncode == 2
    assert "roomd chat: error: argument --invite: " in done.stderr
    assert "Traceback" not in done.stderr and "x" * 42 not in done.stderr


def test_no_roomd_to_connect_to_exits_1_with_a_message() -> None:
    """The real command, nothing listening at --url: status 1 and why, no traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v1"
    done = subprocess.run(
        [sys.executable, "-m", "roomd", "chat", "--url", url, "--token", "t"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(None),
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"roomd chat: cannot connect to {url}: ")
    assert "Traceback" not in done.stderr


@pytest.fixture
def roomd_without_env_secret(tmp_path: Path) -> Iterator[RoomdProcess]:
    """A roomd that keeps its token secret in `tmp_path` (made at startup), not in the env."""
    for start in roomd_processes(tmp_path):
        yield start(secret=None)


async def chat_as_minted(roomd: RoomdProcess, data_dir: Path) -> None:
    options = options_from_args(
        parse("--url", roomd.url, "--data-dir", str(data_dir), "--name", "dora")
    )
    async with open_chat(options) as app, app.run_test() as pilot:
        assert "★ dora (host) (you)" in await until(pilot, "#members", "dora")
        await until(pilot, "#invite", f"invite: {roomd.url}#room=")


@pytest.mark.e2e
def test_a_chat_logs_in_with_the_data_dirs_secret(
    roomd_without_env_secret: RoomdProcess, tmp_path: Path
) -> None:
    """A token minted from roomd's own data dir gets the chat in, as --name."""
    asyncio.run(chat_as_minted(roomd_without_env_secret, tmp_path))


async def join_missing_room(roomd: RoomdProcess) -> None:
    link = invite_link(roomd.url, "no-such-room", b"k" * 32)
    options = options_from_args(parse("--invite", link, "--token", token("erin")))
    with pytest.raises(ChatError, match="cannot join room no-such-room: "):
        async with open_chat(options):
            pass


@pytest.fixture
def roomd(tmp_path: Path) -> Iterator[RoomdProcess]:
    """A roomd process in `tmp_path` with the tests' token secret."""
    for start in roomd_processes(tmp_path):
        yield start()


@pytest.mark.e2e
def test_an_invite_to_a_room_that_is_gone_fails_to_start(roomd: RoomdProcess) -> None:
    """Joining by a link whose room does not exist stops with the reason roomd gave."""
    asyncio.run(join_missing_room(roomd))
