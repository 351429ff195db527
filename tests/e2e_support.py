"""End-to-end support: a real `roomd serve` subprocess and two blocking clients.

`RoomdProcess.start` runs `python -m roomd serve` on 127.0.0.1 port 0, waits (bounded)
for its `listening` line and captures its stderr in a file. `WsClient` wraps the
`websockets` sync client, `TrioClient` wraps trio-websocket's client running in its
own thread; both speak JSON or CBOR and give every blocking call a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import cbor2
import orjson
import trio
from trio_websocket import open_websocket_url
from websockets.sync.client import ClientConnection, connect

from roomd.core.token import mint_token

SECRET = "e2e-token-secret-5f0c9a1d7b3e4c2a8d6f0e1b9a7c5d3e"
JSON = "roomd.v1.json"
CBOR = "roomd.v1.cbor"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
RECV_TIMEOUT = 5.0
ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^Traceback")


def token(aid: str, secret: str = SECRET, ttl: float = 3600) -> str:
    """Return a valid token for `aid` signed with `secret`."""
    return mint_token(secret, aid, now=time.time(), ttl=ttl)[0]


def b64(data: bytes) -> str:
    """Return `data` as padded standard base64, as the JSON codec carries blobs."""
    return base64.b64encode(data).decode("ascii")


def clean_env(secret: str | None) -> dict[str, str]:
    """Return this process's environment without `ROOMD_*`, plus the token secret if any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMD_")}
    if secret is not None:
        env["ROOMD_TOKEN_SECRET"] = secret
    return env


@attrs.define(eq=False)
class RoomdProcess:
    """A running `roomd serve` child process and where to reach it."""

    proc: subprocess.Popen[bytes]
    url: str
    stderr_path: Path
    _stdout_reader: threading.Thread
    api_url: str | None = None

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *args: str,
        secret: str | None = SECRET,
        log_name: str = "roomd",
        env: dict[str, str] | None = None,
    ) -> RoomdProcess:
        """Start roomd with `args` and return once it prints its `listening` line.

        Raises `AssertionError` (after killing the child) if no such line comes
        within `STARTUP_TIMEOUT` seconds.
        """
        stderr_path = data_dir / f"{log_name}.stderr"
        command = [sys.executable, "-m", "roomd", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--api-port", "0", "--data-dir", str(data_dir), *args]
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**clean_env(secret), **(env or {})},
            )
        lines: queue.Queue[str | None] = queue.Queue()

        def read_stdout() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode(errors="replace").strip())
            lines.put(None)

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            line = None
        if line is None or not line.startswith("listening "):
            proc.kill()
            proc.wait(STOP_TIMEOUT)
            reader.join(STOP_TIMEOUT)
            if proc.stdout is not None:
                proc.stdout.close()
            raise AssertionError(
                f"roomd did not start: stdout {line!r}, stderr {stderr_path.read_text()!r}"
            )
        api_url = None
        if "--no-api" not in args:
            api_line = lines.get(timeout=STARTUP_TIMEOUT)
            assert api_line is not None and api_line.startswith("api "), api_line
            api_url = api_line.removeprefix("api ")
        return cls(proc, line.removeprefix("listening "), stderr_path, reader, api_url)

    @property
    def base(self) -> str:
        """Return the URL without its `/v1` path, e.g. `ws://127.0.0.1:4242`."""
        return self.url.removesuffix("/v1")

    def logs(self) -> str:
        """Return everything the process wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM (once it is still running)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the process and return its exit status; kill it and fail after `timeout`."""
        self.terminate()
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise AssertionError(f"roomd did not exit within {timeout} s of SIGTERM") from None
        finally:
            self._stdout_reader.join(STOP_TIMEOUT)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return status


def roomd_processes(tmp_path: Path) -> Iterator[Callable[..., RoomdProcess]]:
    """Yield a starter of roomd processes; stop every one still running afterwards."""
    started: list[RoomdProcess] = []

    def start(
        *args: str,
        secret: str | None = SECRET,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> RoomdProcess:
        data_dir = data_dir or tmp_path
        process = RoomdProcess.start(
            data_dir, *args, secret=secret, log_name=f"roomd-{len(started)}", env=env
        )
        started.append(process)
        return process

    yield start
    failures = []
    for process in started:
        try:
            process.stop()  # also reaps and closes the pipes of one a test already stopped
        except AssertionError as exc:
            failures.append(str(exc))
        # Like conftest's guard for in-process servers: an error log is a bug.
        errors = [line for line in process.logs().splitlines() if ERROR_LINE.search(line)]
        if errors:
            failures.append(f"roomd logged errors: {errors}")
    assert not failures, failures


def encode(subprotocol: str, message: dict[str, Any]) -> str | bytes:
    """Return the frame payload of `message`: a JSON string or CBOR bytes."""
    if subprotocol == CBOR:
        return cbor2.dumps(message)
    return orjson.dumps(message).decode()


def decode(data: str | bytes) -> dict[str, Any]:
    """Return the message a frame carries: text is JSON, binary is CBOR."""
    value = orjson.loads(data) if isinstance(data, str) else cbor2.loads(data)
    assert isinstance(value, dict), value
    return value


class Silent(Exception):
    """Nothing arrived within the timeout."""


class BlockingClient:
    """What both clients share: framing, a `hello` check and request helpers."""

    subprotocol: str

    def send(self, message: dict[str, Any]) -> None:
        """Send one message in this client's codec."""
        self.send_raw(encode(self.subprotocol, message))

    def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Return the next message; raise `Silent` if none arrives within `timeout`."""
        return decode(self.recv_raw(timeout))

    def recv_type(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Return the next message of type `kind`, skipping others."""
        while True:
            message = self.recv(timeout)
            if message["type"] == kind:
                return message

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send `message` and return the next message received."""
        self.send(message)
        return self.recv()

    def expect_hello(self) -> None:
        """Read the server's first message, which must be `hello`."""
        hello = self.recv()
        assert hello["type"] == "hello" and hello["protocol"] == "roomd.v1", hello

    def login(self, aid: str, secret: str = SECRET) -> dict[str, Any]:
        """Read `hello`, authenticate as `aid` and return `authOk`."""
        self.expect_hello()
        reply = self.request({"type": "auth", "token": token(aid, secret)})
        assert reply["type"] == "authOk" and reply["aid"] == aid, reply
        return reply

    def assert_silent(self, timeout: float = 0.3) -> None:
        """Fail if any message arrives within `timeout` seconds."""
        try:
            message = self.recv(timeout)
        except Silent:
            return
        raise AssertionError(f"unexpected message {message}")

    def send_raw(self, data: str | bytes) -> None:
        raise NotImplementedError

    def recv_raw(self, timeout: float) -> str | bytes:
        raise NotImplementedError


class WsClient(BlockingClient):
    """The `websockets` sync client."""

    def __init__(
        self,
        url: str,
        subprotocol: str = JSON,
        ssl_context: ssl.SSLContext | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        self.subprotocol = subprotocol
        # `with connect(...)` is the form every websockets release accepts without warnings.
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(
                url,
                subprotocols=[subprotocol],  # type: ignore[list-item]
                ssl=ssl_context,
                open_timeout=RECV_TIMEOUT,
                close_timeout=2,
                # websockets passes it to socket.create_connection: the client's own address.
                source_address=source_address,
            )
        )

    def send_raw(self, data: str | bytes) -> None:
        self.ws.send(data)

    def recv_raw(self, timeout: float) -> str | bytes:
        try:
            return self.ws.recv(timeout=timeout)
        except TimeoutError:
            raise Silent from None

    def close(self) -> None:
        """Close the connection (bounded by the client's close timeout)."""
        self._stack.close()


class TrioClient(BlockingClient):
    """trio-websocket's client, run by `trio.run` in its own thread, driven from this one."""

    def __init__(self, url: str, subprotocol: str = JSON) -> None:
        self.subprotocol = subprotocol
        self._url = url
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ws: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(RECV_TIMEOUT + 1), "trio client did not connect in time"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_websocket_url(
            self._url,
            subprotocols=[self.subprotocol],
            connect_timeout=RECV_TIMEOUT,
            disconnect_timeout=2,
        ) as ws:
            self._ws = ws
            self._ready.set()
            await self._stop.wait()

    @property
    def negotiated(self) -> str | None:
        """Return the subprotocol the server chose."""
        return self._ws.subprotocol  # type: ignore[no-any-return]

    def send_raw(self, data: str | bytes) -> None:
        trio.from_thread.run(self._ws.send_message, data, trio_token=self._token)

    def recv_raw(self, timeout: float) -> str | bytes:
        async def receive() -> str | bytes | None:
            with trio.move_on_after(timeout):
                return await self._ws.get_message()  # type: ignore[no-any-return]
            return None

        data = trio.from_thread.run(receive, trio_token=self._token)
        if data is None:
            raise Silent
        return data

    def close(self) -> None:
        """Close the connection and end the client's thread (bounded)."""
        if self._thread.is_alive() and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(STOP_TIMEOUT)
        assert not self._thread.is_alive(), "trio client did not close in time"
        if self._error is not None:
            raise self._error
