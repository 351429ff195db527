"""`roomd serve --workers N`: N cluster nodes on one machine, sharing its WebSocket port.

The supervisor (this process) creates the machine's shared per-IP count,
reserves the port (a free one for `--port 0`), and starts N worker processes.
Each is a full node: it binds the same port with SO_REUSEPORT (the kernel
spreads new connections over them), serves the server API on `api_port + i`
(its own `/metrics`), and is named `<node-id>-<i>` in the cluster. A worker
that dies is started again after a second, its share of the per-IP count
zeroed first (its connections died with it; the other nodes sweep its room
members, and the new process, with the same node id, sweeps them at once).
SIGINT or SIGTERM stops every worker gracefully, then the supervisor.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

import attrs

from roomd.config import Config
from roomd.core.admission import IpCounts
from roomd.daemon.shared_ip_counts import SharedIpCounts

log = logging.getLogger("roomd.supervisor")

# How long a dead worker waits before it is started again.
RESTART_AFTER = 1.0
# How long the supervisor waits for a stopping worker before it kills it.
STOP_TIMEOUT = 30.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) `host:port` with SO_REUSEPORT; port 0 picks a free one.

    Kept open while the workers run, so that the port stays this machine's.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_config(config: Config, port: int, base_id: str, index: int) -> Config:
    """Return the config of worker `index`: the shared port, its own API port and node id."""
    return attrs.evolve(
        config,
        workers=1,
        port=port,
        reuse_port=True,
        node_id=f"{base_id}-{index}",
        api_port=config.api_port + index if config.api_port else 0,
    )


# How a worker runs its node: `roomd.cli.run_node`, handed in (it is the CLI's).
RunNode = Callable[[Config, IpCounts], None]


def _work(
    run_node: RunNode, config: Config, counts: SharedIpCounts, index: int, log_level: str
) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_node(config, counts.for_worker(index))


def supervise(config: Config, log_level: str, run_node: RunNode) -> None:
    """Run `config.workers` workers until SIGINT or SIGTERM; restart any that dies.

    Each worker is a new process (spawned) that calls `run_node` with its config
    and its view of the shared per-IP count.
    """
    context = multiprocessing.get_context("spawn")
    counts = SharedIpCounts(config.workers, context=context)
    reserved = reserve_port(config.host, config.port)
    port = int(reserved.getsockname()[1])
    base_id = config.node_id or secrets.token_hex(4)
    stopping = threading.Event()

    def spawn(index: int) -> BaseProcess:
        worker = context.Process(
            target=_work,
            args=(run_node, worker_config(config, port, base_id, index), counts, index, log_level),
            name=f"roomd worker {index}",
        )
        worker.start()
        return worker

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping %d workers", signum, len(workers))
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = [spawn(index) for index in range(config.workers)]
    try:
        while not stopping.wait(0.2):
            for index, worker in enumerate(workers):
                if worker.is_alive() or stopping.is_set():
                    continue
                log.warning("worker %d exited (%s): starting it again", index, worker.exitcode)
                counts.forget_worker(index)
                if not stopping.wait(RESTART_AFTER):
                    workers[index] = spawn(index)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: the worker's graceful shutdown
        for worker in workers:
            worker.join(STOP_TIMEOUT)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reserved.close()
