"""Merge the workers' results of a scenario, print the table, write the JSON."""

from __future__ import annotations

import datetime
import json
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from bench.measure import percentile

BUSY = 0.85


def merge(name: str, settings: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Return one scenario variant's figures from the results of all its workers."""
    shards = sorted(shards, key=lambda s: s["shard"])
    leader = shards[0]
    window = leader["window"]
    wall = window["wall_s"]
    deliveries = sum(s["window"]["deliveries"] for s in shards)
    messages = sum(s["window"]["messages"] for s in shards)
    gen_cpu = sum(s["window"]["generator_cpu_s"] for s in shards)
    server_cpu = window.get("server_cpu_s")
    latencies = array("q")
    for shard in shards:
        latencies.frombytes(shard["latencies_ns"])
    ordered = sorted(latencies)

    def ms(fraction: float) -> float | None:
        value = percentile(ordered, fraction)
        return None if value is None else round(value / 1e6, 3)

    def total(key: str) -> int:
        return sum(s["totals"][key] for s in shards)

    def counts(key: str) -> dict[str, int]:
        merged: Counter[str] = Counter()
        for shard in shards:
            merged.update(shard[key])
        return dict(sorted(merged.items()))

    server_util = server_cpu / wall if server_cpu is not None and wall > 0 else None
    gen_util = gen_cpu / wall / len(shards) if wall > 0 else 0.0
    result: dict[str, Any] = {
        "name": name,
        "settings": settings,
        "workers": len(shards),
        "wall_s": round(wall, 3),
        "deliveries": deliveries,
        "messages": messages,
        "deliveries_per_s": round(deliveries / wall, 1) if wall > 0 else None,
        "server_cpu_s": server_cpu,
        "server_us_per_delivery": (
            round(server_cpu * 1e6 / deliveries, 2)
            if server_cpu is not None and deliveries
            else None
        ),
        "server_cpu_util": None if server_util is None else round(server_util, 3),
        "generator_cpu_s": round(gen_cpu, 3),
        "generator_cpu_util_per_worker": round(gen_util, 3),
        "generator_us_per_delivery": round(gen_cpu * 1e6 / deliveries, 2) if deliveries else None,
        "bound": _bound(server_util, gen_util),
        "latency_ms": {
            "count": len(ordered),
            "p50": ms(0.5),
            "p99": ms(0.99),
            "p99.9": ms(0.999),
            "max": ms(1.0),
        },
        "lost": total("lost"),
        "duplicated": total("duplicated"),
        "reordered": total("reordered"),
        "sender_breaks": total("sender_breaks"),
        "missing_from_senders": sum(s["extra"].get("missing_from_senders", 0) for s in shards),
        "views_unsettled": total("unsettled"),
        "foreign_or_unexpected": sum(s["foreign"] + s["unexpected_room"] for s in shards),
        "protocol_errors": sum(s["protocol_errors"] for s in shards),
        "errors": counts("errors"),
        "closes": counts("closes"),
        "received_by_type": counts("by_type"),
        "server_rss_bytes_end": window.get("server_rss_bytes"),
    }
    extra = [s["extra"] for s in shards]
    if "ramp_s" in extra[0]:  # idle
        conns = sum(e["connections"] for e in extra)
        ramp = max(e["ramp_s"] for e in extra)
        result["connections"] = conns
        result["open_at_end"] = sum(e["open_at_end"] for e in extra)
        result["connects_joins_per_s"] = round(conns / ramp, 1) if ramp else None
        result["pings_answered"] = sum(e["pings"] for e in extra)
        before, held = extra[0]["rss_before"], extra[0]["rss_held"]
        if before is not None and held is not None and conns:
            result["server_rss_before_bytes"] = before
            result["server_rss_held_bytes"] = held
            result["server_rss_per_conn_bytes"] = round((held - before) / conns)
        if server_cpu is not None and conns and wall:
            result["server_us_per_conn_per_s"] = round(server_cpu * 1e6 / conns / wall, 3)
        pings = result["pings_answered"]
        if server_cpu is not None and pings:
            # One ping cycle of one connection: the ping, its pong, the timers.
            result["server_us_per_ping_cycle"] = round(server_cpu * 1e6 / pings, 2)
    if "lifecycles" in extra[0]:  # churn
        done = sum(e["lifecycles"] for e in extra)
        result["lifecycles"] = done
        result["lifecycles_started"] = sum(e["lifecycles_started"] for e in extra)
        result["connects_joins_per_s"] = round(done / wall, 1) if wall else None
        result["lifecycle_ms"] = {
            "p50": round(max(e["lifecycle_p50_ms"] for e in extra), 3),
            "p99": round(max(e["lifecycle_p99_ms"] for e in extra), 3),
        }
        if server_cpu is not None and done:
            result["server_us_per_lifecycle"] = round(server_cpu * 1e6 / done, 1)
    if "soak_samples" in extra[0]:  # soak: the server's resources over time (leader's view)
        samples = extra[0]["soak_samples"]
        result["soak_samples"] = samples
        result["lifecycles"] = sum(e["soak_lifecycles"] for e in extra)
        if len(samples) >= 3:
            # Warm-up: the first sample is taken as the load starts; judge from the second.
            rss = [s["rss"] for s in samples[1:]]
            result["soak_rss_growth_after_warmup"] = round(rss[-1] / rss[0] - 1, 4)
            result["soak_fds_max"] = max(s["fds"] for s in samples)
    if "offered_msgs_per_s" in extra[0]:
        result["offered_msgs_per_s"] = extra[0]["offered_msgs_per_s"]
        result["messages_sent"] = extra[0]["count"]
    return result


def _bound(server_util: float | None, gen_util: float) -> str:
    """Name the side that ran out of CPU: each side is one busy core at most per process."""
    if server_util is not None and server_util >= BUSY and server_util >= gen_util:
        return "server"
    if gen_util >= BUSY:
        return "generator"
    if server_util is None:
        return "unknown (no --server-pid)"
    return "neither (offered load below capacity)"


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def table(results: list[dict[str, Any]]) -> str:
    """Return the results as a fixed-width table plus one detail line per scenario."""
    head = (
        f"{'scenario':<17}{'deliv/s':>10}{'srv us/d':>9}{'gen us/d':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}{'lost/dup/reord':>15}"
        f"{'srv cpu':>8}{'gen cpu':>8}  bound"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lat = r["latency_ms"]
        util = r["server_cpu_util"]
        lines.append(
            f"{r['name']:<17}{_fmt(r['deliveries_per_s'], ',.0f'):>10}"
            f"{_fmt(r['server_us_per_delivery'], '.2f'):>9}"
            f"{_fmt(r['generator_us_per_delivery'], '.2f'):>9}"
            f"{_fmt(lat['p50'], '.2f'):>8}{_fmt(lat['p99'], '.2f'):>8}"
            f"{_fmt(lat['p99.9'], '.2f'):>8}"
            f"{r['lost']:>7}/{r['duplicated']}/{r['reordered']:<5}"
            f"{_fmt(None if util is None else util * 100, '.0f') + '%':>8}"
            f"{r['generator_cpu_util_per_worker'] * 100:>7.0f}%  {r['bound'].split(' ')[0]}"
        )
    lines.append("")
    for r in results:
        detail = [f"{r['name']}: {r['deliveries']} deliveries in {r['wall_s']:.1f}s"]
        if r.get("connects_joins_per_s") is not None:
            detail.append(f"connects+joins/s {r['connects_joins_per_s']}")
        if r.get("server_rss_per_conn_bytes") is not None:
            detail.append(f"server RSS/idle conn {r['server_rss_per_conn_bytes'] / 1024:.1f} KiB")
        if r.get("server_us_per_conn_per_s") is not None:
            detail.append(f"idle srv us/conn/s {r['server_us_per_conn_per_s']}")
        if r.get("server_us_per_ping_cycle") is not None:
            detail.append(f"srv us/conn/ping cycle {r['server_us_per_ping_cycle']}")
        if r.get("lifecycle_ms"):
            detail.append(
                f"lifecycles {r['lifecycles']}/{r['lifecycles_started']}, "
                f"p50 {r['lifecycle_ms']['p50']} ms p99 {r['lifecycle_ms']['p99']} ms"
            )
        if r.get("soak_samples"):
            first, last = r["soak_samples"][0], r["soak_samples"][-1]
            detail.append(
                f"soak RSS {first['rss'] / 2**20:.1f} -> {last['rss'] / 2**20:.1f} MiB "
                f"(after warm-up {_fmt(r.get('soak_rss_growth_after_warmup'), '+.1%')}), "
                f"fds {first['fds']} -> {last['fds']} (max {r.get('soak_fds_max')}), "
                f"lifecycles {r['lifecycles']}"
            )
        detail.append(
            f"srv cpu {_fmt(r['server_cpu_s'], '.2f')}s gen cpu {r['generator_cpu_s']:.2f}s"
        )
        detail.append(f"errors {r['errors'] or 0} closes {r['closes'] or 0}")
        if r["sender_breaks"] or r["missing_from_senders"] or r["views_unsettled"]:
            detail.append(
                f"sender breaks {r['sender_breaks']}, missing from senders "
                f"{r['missing_from_senders']}, unsettled {r['views_unsettled']}"
            )
        lines.append("  " + "; ".join(detail))
    return "\n".join(lines)


def history_cost(results: list[dict[str, Any]]) -> float | None:
    """Return how much more server CPU per delivery `rooms` took than `rooms-no-history`.

    None unless both ran and measured the server.
    """
    by_name = {r["name"]: r.get("server_us_per_delivery") for r in results}
    on, off = by_name.get("rooms"), by_name.get("rooms-no-history")
    if not on or not off:
        return None
    return float(on) / float(off) - 1


def write(directory: Path, document: dict[str, Any], latest: str = "latest.json") -> Path:
    """Write `document` as `<directory>/<UTC timestamp>.json` and as `latest`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    path = directory / f"{stamp}.json"
    path.write_text(text)
    (directory / latest).write_text(text)
    print(f"results: {path}", file=sys.stderr)
    return path
