"""`python -m bench`: start roomd (or use `--url`), run scenarios, report.

Without `--url`, each scenario variant gets a fresh `roomd serve` on 127.0.0.1,
port 0, a temporary data dir with its default SQLite store and history on
(`rooms-no-history` turns it off), no REST API and every limit
lifted, so that its CPU, RSS and rooms are its own; the server is stopped with
SIGTERM afterwards. With `--url`, the scenarios run against that server, and
`--server-pid` (optional) lets the benchmark read its CPU and RSS.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from bench import report, scenarios, soak
from bench.client import Target
from bench.coord import Coordinator
from bench.measure import machine, raise_open_file_limit, versions
from bench.session import Run

RESULTS = Path(__file__).parent / "results"

# name -> (scenario, settings). `just bench` runs all of them in this order.
SUITE: dict[str, tuple[str, dict[str, Any]]] = {
    "fanout-50-blast": ("fanout", {"members": 50, "mode": "blast", "count": 5000}),
    "fanout-50-paced": ("fanout", {"members": 50, "mode": "paced"}),
    "fanout-500-blast": ("fanout", {"members": 500, "mode": "blast", "count": 2000}),
    "fanout-500-paced": ("fanout", {"members": 500, "mode": "paced"}),
    "rooms": ("rooms", {"rooms": 200, "size": 10, "rate": 1.0, "duration": 15.0}),
    # The same chat mix with history off: what storing every message costs.
    "rooms-no-history": ("rooms", {"rooms": 200, "size": 10, "rate": 1.0, "duration": 15.0}),
    "idle": ("idle", {"connections": 10_000, "size": 10, "hold": 20.0}),
    # Idle connections pinged every second: what a heartbeat costs the server.
    "heartbeat": ("idle", {"connections": 3000, "size": 10, "hold": 20.0}),
    "churn": ("churn", {"rate": 100.0, "duration": 10.0, "rooms": 20}),
}
# Variants run only when named (`just bench soak`): too long for the standard suite.
ON_REQUEST: dict[str, tuple[str, dict[str, Any]]] = {
    "soak": ("soak", {"duration": 600.0}),
}
VARIANTS = {**SUITE, **ON_REQUEST}
# roomd flags of one variant, on top of SERVER_FLAGS.
VARIANT_FLAGS: dict[str, list[str]] = {
    "rooms-no-history": ["--history-size", "0"],
    "heartbeat": ["--heartbeat-interval", "1"],
}

SERVER_FLAGS = [
    "--host", "127.0.0.1", "--port", "0", "--no-api",
    "--max-conns-per-ip", "0", "--rate", "1000000", "--burst", "1000000",
    "--send-queue", "8192", "--max-members", "1000", "--heartbeat-interval", "10",
    "--log-level", "WARNING",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        help=f"scenario (fanout, rooms, idle, churn, soak) or variant ({', '.join(VARIANTS)}); "
        "none: the standard suite",
    )
    parser.add_argument("--url", help="use this server (ws://host:port/v1) instead of starting one")
    parser.add_argument("--token-secret", help="HS256 secret of --url's tokens")
    parser.add_argument("--server-pid", type=int, help="pid of --url's server, for CPU and RSS")
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default 1)")
    parser.add_argument("--size", type=int, default=120, help="ciphertext bytes (default 120)")
    parser.add_argument(
        "--drain", type=float, default=15.0, help="seconds to wait for in-flight deliveries"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="connects in flight during set-up"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario setting, e.g. --set members=100 --set hold=5",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of load (the same as --set duration=...)"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra roomd flag")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    return parser


def select(names: list[str]) -> list[str]:
    """Return the suite variants named (a scenario name selects all its variants)."""
    if not names:
        return list(SUITE)
    chosen: list[str] = []
    for name in names:
        matches = [v for v, (scenario, _) in VARIANTS.items() if name in (v, scenario)]
        if not matches:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(VARIANTS)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn `KEY=VALUE` strings into settings (numbers parsed)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        value: Any = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        found[key] = value
    return found


@attrs.frozen
class Server:
    """A roomd process started for one scenario."""

    process: subprocess.Popen[str]
    url: str
    secret: str
    argv: list[str]


@contextmanager
def roomd_server(extra: list[str]) -> Iterator[Server]:
    """Start `roomd serve` on a free port; stop it with SIGTERM when done."""
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="roomd-bench-") as data_dir:
        argv = [sys.executable, "-m", "roomd", "serve", "--data-dir", data_dir, *SERVER_FLAGS]
        argv += extra
        env = {**os.environ, "ROOMD_TOKEN_SECRET": secret}
        log = Path(data_dir) / "server.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
            )
            try:
                url = _read_listening(process)
                yield Server(process=process, url=url, secret=secret, argv=argv[1:])
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                    print("  server did not stop within 15 s of SIGTERM: killed", file=sys.stderr)
                if code != 0:
                    print(f"  server exited with {code}", file=sys.stderr)
                problems = [
                    line for line in log.read_text().splitlines() if "Traceback" in line or
                    " ERROR " in line or "CRITICAL" in line
                ]  # fmt: skip
                if problems:
                    print(f"  server log: {len(problems)} error lines, e.g.:", file=sys.stderr)
                    for line in problems[:5]:
                        print(f"    {line}", file=sys.stderr)


def _read_listening(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"roomd exited ({process.poll()}) before listening")
        if line.startswith("listening "):
            return line.split()[1]
    raise SystemExit("roomd did not print its listening line within 20 s")


def _scenario(name: str) -> scenarios.Scenario:
    if VARIANTS[name][0] == "soak":
        return soak.soak
    return getattr(scenarios, VARIANTS[name][0])  # type: ignore[no-any-return]


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"size": args.size, "drain": args.drain, "concurrency": args.concurrency}


async def _shard(
    name: str,
    settings: dict[str, Any],
    url: str,
    secret: str,
    server_pid: int | None,
    run_kwargs: dict[str, Any],
    coord: Coordinator,
) -> dict[str, Any]:
    more_urls = run_kwargs.pop("more_urls", ())
    run = Run(
        name=name,
        target=Target.from_url(url),
        secret=secret,
        coord=coord,
        server_pid=server_pid,
        more_targets=tuple(Target.from_url(more) for more in more_urls),
        **run_kwargs,
    )
    return await _scenario(name)(run, **settings)


def _worker(
    name: str,
    settings: dict[str, Any],
    url: str,
    secret: str,
    server_pid: int | None,
    run_kwargs: dict[str, Any],
    shard: int,
    count: int,
    values: Any,
    barrier: Any,
    out: Any,
) -> None:
    raise_open_file_limit()
    coord = Coordinator(shard, count, values, barrier)
    out.put(trio.run(_shard, name, settings, url, secret, server_pid, run_kwargs, coord))


def run_variant(
    name: str,
    settings: dict[str, Any],
    url: str,
    secret: str,
    pid: int | None,
    args: Any,
    *,
    more_urls: tuple[str, ...] = (),
    more_pids: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Run one variant with `args.workers` generator processes; return merged figures.

    `more_urls`: further nodes of a cluster, which clients are spread over
    (round-robin with `url`); `more_pids`: processes whose CPU counts as the
    server's too (the other nodes, redis-server).
    """
    run_kwargs = {**_run_kwargs(args), "more_urls": more_urls, "more_pids": more_pids}
    if args.workers <= 1:
        shards = [trio.run(_shard, name, settings, url, secret, pid, run_kwargs, Coordinator())]
    else:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager:
            values = manager.dict()
            barrier = context.Barrier(args.workers)
            out = context.Queue()
            workers = [
                context.Process(
                    target=_worker,
                    args=(
                        *(name, settings, url, secret, pid, run_kwargs),
                        *(k, args.workers, values, barrier, out),
                    ),
                )
                for k in range(args.workers)
            ]
            for worker in workers:
                worker.start()
            shards = [out.get() for _ in workers]
            for worker in workers:
                worker.join()
    return report.merge(name, settings, shards)


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print the table, write the JSON; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.url and not args.token_secret:
        raise SystemExit("--url needs --token-secret")
    fd_limit = raise_open_file_limit()  # the server child inherits it too
    overrides = parse_overrides(args.set)
    if args.duration is not None:
        overrides["duration"] = args.duration
    names = select(args.scenarios)
    started = time.time()
    results = []
    server_argv: list[str] | None = None
    for name in names:
        defaults = VARIANTS[name][1]
        settings = {**defaults, **{k: v for k, v in overrides.items() if k in _params(name)}}
        print(f"{name}: {settings}", file=sys.stderr, flush=True)
        if args.url:
            result = run_variant(name, settings, args.url, args.token_secret, args.server_pid, args)
        else:
            with roomd_server([*VARIANT_FLAGS.get(name, []), *args.server_arg]) as server:
                server_argv = server.argv
                pid = server.process.pid
                result = run_variant(name, settings, server.url, server.secret, pid, args)
        results.append(result)
    elapsed = time.time() - started
    print()
    print(report.table(results))
    cost = report.history_cost(results)
    if cost is not None:
        print(f"\nhistory on: chat mix server CPU per delivery {cost:+.1%} against history off")
    print(f"\n{len(results)} scenarios in {elapsed:.0f}s")
    document = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(elapsed, 1),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "url": args.url or "fresh roomd serve per scenario",
            "server_argv": server_argv,
            "workers": args.workers,
            "ciphertext_bytes": args.size,
            "drain_s": args.drain,
            "connect_concurrency": args.concurrency,
            "overrides": overrides,
            "open_file_limit": fd_limit,
        },
        "results": results,
    }
    if not args.no_write:
        report.write(RESULTS, document)
    return 0


def _params(name: str) -> set[str]:
    code = _scenario(name).__code__
    return set(code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount])
