"""A real redis-server per test: Debian's package, on a free loopback port, in a temp dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from ..e2e_support import RoomdProcess, roomd_processes


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class RedisServer:
    """One redis-server (no persistence) that a test may stop and start again."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server; return once it answers PING (within 10 s)."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: `just test` installs Debian's redis-server"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start within 10 s"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (its data, held in memory only, is gone)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Start a redis-server for one test; yield it, then stop it."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_port(redis_server: RedisServer) -> int:
    """The port of the test's redis-server."""
    return redis_server.port


Start = Callable[..., RoomdProcess]
API_KEY = "cluster-test-api-key-0123456789abcdef"


@pytest.fixture
def roomd(tmp_path: Path, redis_port: int) -> Iterator[Start]:
    """Yield a starter of roomd processes (every one stopped after the test, before Redis)."""
    yield from roomd_processes(tmp_path)


@pytest.fixture
def nodes(roomd: Start, redis_port: int, tmp_path: Path) -> Callable[..., list[RoomdProcess]]:
    """Return a starter of `count` cluster nodes sharing the test's redis-server."""

    def start(count: int, *args: str) -> list[RoomdProcess]:
        started = []
        for index in range(count):
            data_dir = tmp_path / f"node{index}"
            data_dir.mkdir(exist_ok=True)
            started.append(
                roomd(
                    "--cluster",
                    f"redis://127.0.0.1:{redis_port}/0",
                    "--node-id",
                    f"n{index}",
                    *args,
                    data_dir=data_dir,
                    env={"ROOMD_API_KEY": API_KEY},
                )
            )
        return started

    return start
