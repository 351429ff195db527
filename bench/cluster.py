"""`python -m bench cluster`: what the Redis hop costs, against one node, in one run.

For each load (a paced fan-out and the chat mix, both at about 5,000
deliveries a second, so that no process is CPU-bound on two cores), it runs
the load twice with the same generator: against one `roomd serve` alone (its
embedded store, no `--cluster`), then against two nodes sharing a fresh
redis-server, with every room's members spread over both nodes. It prints the
server CPU per delivery (the nodes plus redis-server against the one node),
redis-server's CPU per function call (`INFO commandstats`), the latency
percentiles and their difference, and what was lost, duplicated or reordered.
Under each load's redis-server figure it prints the floor: what a lone `PING`
and a lone no-op `FCALL` cost a fresh redis-server at the rate the load's calls
came at (bench/redis_floor.py).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from bench import redis_floor, report
from bench.measure import machine, proc_cpu_seconds, raise_open_file_limit, versions
from bench.run import RESULTS, SERVER_FLAGS, _read_listening, roomd_server, run_variant

# name -> (scenario, settings): each near 5,000 deliveries/s.
LOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "fanout-50-paced": (
        "fanout",
        {"members": 50, "mode": "paced", "deliveries_per_s": 5000.0, "duration": 10.0},
    ),
    "rooms": ("rooms", {"rooms": 60, "size": 10, "rate": 1.0, "duration": 15.0}),
}
NODES = 2
# How long each lone-call floor of redis-server is measured (per kind of call).
FLOOR_SECONDS = 8.0
# `--workers 2` against one process: the standard suite's chat mix (CPU-bound alone).
WORKERS_LOAD = ("rooms", {"rooms": 200, "size": 10, "rate": 1.0, "duration": 15.0})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start a redis-server (no persistence) on a free loopback port; stop it when done."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing (Debian: apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="roomd-bench-redis-") as directory:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
        process = subprocess.Popen(
            [*argv, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while _redis(port, "PING") != "+PONG":
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start within 10 s")
                time.sleep(0.05)
            yield process, port
        finally:
            process.terminate()
            process.wait(10)


def _redis(port: int, command: str) -> str:
    """Send one inline command; return the reply's text ('' when Redis is not up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(command.encode() + b"\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += conn.recv(65536)
            if reply.startswith(b"$"):  # a bulk string: read it whole
                size = int(reply.split(b"\r\n", 1)[0][1:])
                while len(reply.split(b"\r\n", 1)[1]) < size + 2:
                    reply += conn.recv(65536)
                return reply.split(b"\r\n", 1)[1][:size].decode()
            return reply.decode().strip()
    except OSError:
        return ""


def fcalls(port: int) -> int:
    """Return how many FCALLs redis-server has run (`INFO commandstats`)."""
    for line in _redis(port, "INFO commandstats").splitlines():
        if line.startswith("cmdstat_fcall:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@contextmanager
def workers_node(redis_port: int, secret: str, count: int) -> Iterator[tuple[str, list[int]]]:
    """Start `roomd serve --workers count` on Redis at `redis_port`; yield its url and pids."""
    with tempfile.TemporaryDirectory(prefix="roomd-bench-") as data_dir:
        argv = [sys.executable, "-m", "roomd", "serve", "--data-dir", data_dir, *SERVER_FLAGS]
        argv += ["--cluster", f"redis://127.0.0.1:{redis_port}/0", "--workers", str(count)]
        env = {**os.environ, "ROOMD_TOKEN_SECRET": secret}
        with (Path(data_dir) / "server.log").open("w") as stderr:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
            )
            try:
                url = _read_listening(process)
                for _ in range(count - 1):
                    _read_listening(process)
                children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
                pids = [int(pid) for pid in children.split()]
                workers = [pid for pid in pids if _is_worker(pid)]
                yield url, workers
            finally:
                _stop(process)


def _is_worker(pid: int) -> bool:
    try:
        return "multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def per_process(
    pids: dict[str, int], run: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Call `run()`; return its result and each process's CPU share of one core meanwhile."""
    before = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    return result, {
        name: round((proc_cpu_seconds(pid) - before[name]) / wall, 3) for name, pid in pids.items()
    }


@contextmanager
def cluster_nodes(redis_port: int, secret: str, count: int) -> Iterator[list[tuple[str, int]]]:
    """Start `count` nodes sharing Redis at `redis_port`; yield their (url, pid)."""
    with ExitStack() as stack:
        nodes = []
        for index in range(count):
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="roomd-bench-"))
            argv = [sys.executable, "-m", "roomd", "serve", "--data-dir", data_dir, *SERVER_FLAGS]
            argv += ["--cluster", f"redis://127.0.0.1:{redis_port}/0", "--node-id", f"b{index}"]
            env = {**os.environ, "ROOMD_TOKEN_SECRET": secret}
            stderr = stack.enter_context((Path(data_dir) / "server.log").open("w"))
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
            )
            stack.callback(_stop, process)
            nodes.append((_read_listening(process), process.pid))
        yield nodes


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of `python -m bench cluster`."""
    parser = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    parser.add_argument("--duration", type=float, help="seconds of load of each run")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument(
        "--no-workers", action="store_true", help="skip `--workers 2` against one process"
    )
    return parser


def alone(name: str, settings: dict[str, Any], suite_args: argparse.Namespace) -> dict[str, Any]:
    """Run one load against a `roomd serve` of its own (no cluster); return its figures."""
    print(f"{name} on one process: {settings}", file=sys.stderr, flush=True)
    with roomd_server([]) as server:
        return run_variant(
            name, settings, server.url, server.secret, server.process.pid, suite_args
        )


def compare_workers(suite_args: argparse.Namespace) -> dict[str, Any]:
    """Run the chat mix on one process, then on `--workers 2` (and Redis); return both."""
    name, settings = WORKERS_LOAD
    single = alone(name, settings, suite_args)
    print(f"{name} on --workers 2 and redis-server", file=sys.stderr, flush=True)
    secret = secrets.token_urlsafe(32)
    with redis_server() as (redis, port), workers_node(port, secret, 2) as (url, pids):
        processes = {f"worker{i}": pid for i, pid in enumerate(pids)} | {"redis": redis.pid}
        processes["generator"] = os.getpid()
        both, shares = per_process(
            processes,
            lambda: run_variant(
                name, settings, url, secret, pids[0], suite_args, more_pids=(*pids[1:], redis.pid)
            ),
        )
    both["cpu_share_by_process"] = shares
    return {"name": name, "single": single, "workers": both}


def workers_table(compared: dict[str, Any]) -> str:
    """Return `--workers 2` against one process as text, with the throughput ratio."""
    single, both = compared["single"], compared["workers"]
    ratio = (both["deliveries_per_s"] or 0) / (single["deliveries_per_s"] or 1)
    lines = ["", f"chat mix ({compared['name']}): --workers 2 against one process"]
    for side, r in (("one", single), ("workers", both)):
        latency = r["latency_ms"]
        lines.append(
            f"  {side:<8} {r['deliveries_per_s'] or 0:>8.0f} deliv/s  "
            f"{r['server_us_per_delivery'] or 0:>7.2f} us/deliv  p50 {latency['p50']} ms  "
            f"p99 {latency['p99']} ms  generator {r['generator_cpu_util_per_worker']:.0%}  "
            f"lost/dup/reord {r['lost']}/{r['duplicated']}/{r['reordered']}"
        )
    lines.append(
        f"  throughput ratio {ratio:.2f}; CPU share by process {both['cpu_share_by_process']}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run each load on one node, then on two nodes and Redis; print and write the comparison."""
    args = build_parser().parse_args(argv)
    raise_open_file_limit()
    # What run_variant reads of the suite's arguments.
    suite_args = argparse.Namespace(workers=1, size=120, drain=15.0, concurrency=100)
    started = time.time()
    compared = []
    for name, (_, settings) in LOADS.items():
        if args.duration is not None:
            settings = {**settings, "duration": args.duration}
        single = alone(name, settings, suite_args)
        print(f"{name} on {NODES} nodes and redis-server", file=sys.stderr, flush=True)
        secret = secrets.token_urlsafe(32)
        with redis_server() as (redis, port), cluster_nodes(port, secret, NODES) as nodes:
            (url, pid), others = nodes[0], nodes[1:]
            calls0, redis_cpu0 = fcalls(port), proc_cpu_seconds(redis.pid)
            processes = {f"node{i}": p for i, (_, p) in enumerate(nodes)} | {"redis": redis.pid}
            processes["generator"] = os.getpid()  # this process: the load's one generator
            run = partial(
                run_variant,
                name,
                settings,
                url,
                secret,
                pid,
                suite_args,
                more_urls=tuple(u for u, _ in others),
                more_pids=(*(p for _, p in others), redis.pid),
            )
            cluster, shares = per_process(processes, run)
            calls, redis_cpu = fcalls(port) - calls0, proc_cpu_seconds(redis.pid) - redis_cpu0
        cluster["redis_fcalls"] = calls
        cluster["redis_cpu_s"] = round(redis_cpu, 3)
        cluster["redis_us_per_fcall"] = round(redis_cpu * 1e6 / calls, 2) if calls else None
        # Over the whole run (set-up and drain too): whether any process was CPU-bound.
        cluster["cpu_share_by_process"] = shares
        floor = lone_call_floor(calls / settings["duration"]) if calls else None
        compared.append({"name": name, "single": single, "cluster": cluster, "redis_floor": floor})
    workers = compare_workers(suite_args) if not args.no_workers else None
    print()
    print(table(compared))
    for item in compared:
        shares = item["cluster"]["cpu_share_by_process"]
        print(
            f"{item['name']}: CPU share by process over the run: {shares};"
            f" together {sum(shares.values()):.2f} of {os.cpu_count()} cores"
        )
    if workers is not None:
        print(workers_table(workers))
    document = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine(),
        "versions": versions(),
        "nodes": NODES,
        "loads": compared,
        "workers": workers,
    }
    if not args.no_write:
        report.write(RESULTS, document, latest="cluster.json")
    return 0


def lone_call_floor(rate: float) -> dict[str, Any]:
    """Return what a lone PING and a lone no-op FCALL cost a fresh redis-server at `rate`/s."""
    print(f"redis-server floor: lone calls at {rate:.0f}/s", file=sys.stderr, flush=True)
    with redis_server() as (redis, port):
        return redis_floor.measure(port, redis.pid, rate, FLOOR_SECONDS)


def table(compared: list[dict[str, Any]]) -> str:
    """Return the comparison as aligned text: one node against the cluster, per load."""
    lines = [
        f"{'load':<16} {'side':<8} {'deliv/s':>8} {'us/deliv':>9} {'util':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'redis us/call':>13} {'lost/dup/reord':>15}"
    ]
    for item in compared:
        for side in ("single", "cluster"):
            r = item[side]
            latency = r["latency_ms"]
            redis = r.get("redis_us_per_fcall")
            loss = f"{r['lost']}/{r['duplicated']}/{r['reordered']}"
            lines.append(
                f"{item['name']:<16} {side:<8} {r['deliveries_per_s'] or 0:>8.0f} "
                f"{r['server_us_per_delivery'] or 0:>9.2f} {r['server_cpu_util'] or 0:>6.2f} "
                f"{latency['p50'] or 0:>7.2f} {latency['p99'] or 0:>7.2f} "
                f"{'' if redis is None else f'{redis:.1f}':>13} {loss:>15}"
            )
        single, cluster = item["single"], item["cluster"]
        extra_cpu = (cluster["server_us_per_delivery"] or 0) - (
            single["server_us_per_delivery"] or 0
        )
        extra_p50 = (cluster["latency_ms"]["p50"] or 0) - (single["latency_ms"]["p50"] or 0)
        lines.append(f"{'':<16} {'extra':<8} {'':>8} {extra_cpu:>+9.2f} {'':>6} {extra_p50:>+7.2f}")
        floor = item.get("redis_floor")
        if floor is not None:
            lines.append(
                f"{'':<16} {'floor':<8} redis-server per lone call at {floor['calls_per_s']:.0f}/s:"
                f" PING {floor['ping_us']:.1f} us, no-op FCALL {floor['no_op_fcall_us']:.1f} us"
            )
    return "\n".join(lines)
