"""`roomd serve --workers N`: N cluster nodes on one machine, one port, one per-IP count.

Real processes: a redis-server on a free loopback port and one supervisor with
two workers (CLUSTER.md, Running).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import attrs
import pytest
from websockets.sync.client import ClientConnection, connect

from ..e2e_support import SECRET, clean_env

API_KEY = "workers-test-api-key-0123456789abcdef"
JSON = "roomd.v1.json"


@attrs.define
class Supervisor:
    """A running `roomd serve --workers N` and what its workers printed."""

    proc: subprocess.Popen[bytes]
    lines: queue.Queue[str]
    url: str = ""
    api_urls: list[str] = attrs.field(factory=list)

    def wait_for_workers(self, count: int, timeout: float = 30) -> None:
        """Read stdout until `count` more workers printed their `api` line."""
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line.startswith("listening "):
                self.url = line.removeprefix("listening ")
            elif line.startswith("api "):
                self.api_urls.append(line.removeprefix("api "))
                seen += 1


@pytest.fixture
def supervisor(redis_port: int, tmp_path: Path) -> Iterator[Supervisor]:
    """Start two workers (--max-conns-per-ip 20); stop them after the test."""
    command = [sys.executable, "-m", "roomd", "serve", "--workers", "2", "--host", "127.0.0.1"]
    command += ["--port", "0", "--api-port", "0", "--data-dir", str(tmp_path)]
    command += ["--cluster", f"redis://127.0.0.1:{redis_port}/0", "--max-conns-per-ip", "20"]
    env = {**clean_env(SECRET), "ROOMD_API_KEY": API_KEY}
    stderr = (tmp_path / "supervisor.stderr").open("wb")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode().strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    running = Supervisor(proc, lines)
    try:
        running.wait_for_workers(2)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
        stderr.close()
        assert status == 0, (tmp_path / "supervisor.stderr").read_text()


def open_connections(url: str, count: int, stack: ExitStack) -> list[ClientConnection]:
    """Open `count` WebSocket connections to `url` (each read up to its `hello`)."""
    opened = []
    for _ in range(count):
        ws = stack.enter_context(connect(url, subprotocols=[JSON]))  # type: ignore[list-item]
        ws.recv(timeout=5)
        opened.append(ws)
    return opened


def open_on(api_url: str) -> int:
    """Return the worker's `roomd_connections_open`."""
    request = urllib.request.Request(
        api_url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("roomd_connections_open "):
                return int(float(line.split()[1]))
    raise AssertionError("no roomd_connections_open")


def refused(url: str) -> bool:
    """True when a new connection to `url` is refused with 429."""
    try:
        with connect(url, subprotocols=[JSON], open_timeout=5):  # type: ignore[list-item]
            return False
    except Exception as exc:  # websockets' InvalidStatus
        return "429" in str(exc)


def test_two_workers_share_the_port_and_one_per_ip_count(supervisor: Supervisor) -> None:
    """20 connections spread over both workers; the 21st is refused, whichever it reaches."""
    with ExitStack() as stack:
        open_connections(supervisor.url, 20, stack)
        counts = [open_on(api) for api in supervisor.api_urls]
        assert sum(counts) == 20 and min(counts) >= 1, counts
        assert refused(supervisor.url)


def test_a_dead_worker_is_started_again_and_its_places_freed(supervisor: Supervisor) -> None:
    """kill -9 of a worker: it comes back, and its connections no longer count."""
    with ExitStack() as stack:
        open_connections(supervisor.url, 20, stack)
        first = supervisor.api_urls[0]
        held = open_on(first)
        port = int(first.rsplit(":", 1)[1])
        pid = worker_pid(port)
        os.kill(pid, signal.SIGKILL)
        supervisor.wait_for_workers(1)
        with ExitStack() as more:
            open_connections(supervisor.url, held, more)  # the dead worker's places
            assert refused(supervisor.url)


def worker_pid(api_port: int) -> int:
    """Return the pid of the process listening on `api_port` (from /proc/net/tcp)."""
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == api_port:
            inode = fields[9]
    assert inode, f"nothing listens on {api_port}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process holds the socket of {api_port}")


def test_workers_need_a_cluster(tmp_path: Path) -> None:
    """--workers without --cluster: roomd refuses and says why."""
    done = subprocess.run(
        [sys.executable, "-m", "roomd", "serve", "--workers", "2", "--data-dir", str(tmp_path)],
        env=clean_env(SECRET),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert b"--workers needs --cluster" in done.stderr
