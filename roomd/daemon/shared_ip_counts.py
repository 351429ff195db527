"""One per-IP connection count for every worker of a machine (`roomd serve --workers N`).

CLUSTER.md: the workers share one per-IP count, so one machine still admits
`max_conns_per_ip` connections per client IP, whichever worker the kernel
hands each one to. The count lives in shared memory that the supervisor
creates before it starts the workers: an open-addressing table keyed by the
IP's 16 bytes, with one counter per worker, under one lock. A worker that
dies leaves its column behind; the supervisor zeroes it (`forget_worker`)
before it starts the worker again, so a crash never leaks places.

The table has `SLOTS` entries. An IP with no connection left gives its slot
back when no probe chain runs past it, and otherwise leaves it for the next
new IP that probes past it. When no slot is left, a new IP is refused, as if
at its limit.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import multiprocessing.sharedctypes
import zlib
from typing import Any

KEY = 16
SLOTS = 1 << 16


def _key(ip: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed.rjust(KEY, b"\0")
    except ValueError:  # not an address (a test's peer name): hash it instead
        return zlib.crc32(ip.encode()).to_bytes(4, "big").rjust(KEY, b"\xff")


class SharedIpCounts:
    """Connections per IP for `workers` processes; this process is worker `index`."""

    def __init__(self, workers: int, slots: int = SLOTS, context: Any = None) -> None:
        context = context or multiprocessing.get_context("spawn")
        self.workers = workers
        self.slots = slots
        self.index = 0
        self._lock = context.Lock()
        self._keys = context.RawArray("B", slots * KEY)
        self._counts = context.RawArray("i", slots * workers)

    def for_worker(self, index: int) -> SharedIpCounts:
        """Return this table as worker `index` counts into it (in the worker's process)."""
        self.index = index
        return self

    def take(self, ip: str, limit: int) -> bool:
        """Count one more connection of `ip` for this worker; False at `limit` (0: none)."""
        key = _key(ip)
        with self._lock:
            slot = self._find(key, claim=True)
            if slot is None:
                return False
            if limit and self._total(slot) >= limit:
                return False
            self._counts[slot * self.workers + self.index] += 1
            return True

    def give_back(self, ip: str) -> None:
        """Count one connection of `ip` fewer for this worker."""
        with self._lock:
            slot = self._find(_key(ip), claim=False)
            if slot is not None and self._counts[slot * self.workers + self.index] > 0:
                self._counts[slot * self.workers + self.index] -= 1
                self._tidy(slot)

    def used_slots(self) -> int:
        """Return how many slots hold a key (IPs connected now, and some that were)."""
        with self._lock:
            return sum(1 for slot in range(self.slots) if not self._unused(slot))

    def _unused(self, slot: int) -> bool:
        return bytes(self._keys[slot * KEY : (slot + 1) * KEY]) == bytes(KEY)

    def _tidy(self, slot: int) -> None:
        """Free `slot` and the idle slots before it when no chain runs past them.

        A slot may be emptied only when the one after it is unused: a key
        further along a probe chain would otherwise be lost. So tables stay
        short-chained however many IPs came and went.
        """
        while (
            self._total(slot) == 0
            and not self._unused(slot)
            and self._unused((slot + 1) % self.slots)
        ):
            self._keys[slot * KEY : (slot + 1) * KEY] = bytes(KEY)
            slot = (slot - 1) % self.slots

    def count(self, ip: str) -> int:
        """Return `ip`'s open connections over every worker."""
        with self._lock:
            slot = self._find(_key(ip), claim=False)
            return 0 if slot is None else self._total(slot)

    def forget_worker(self, index: int) -> None:
        """Zero every count of worker `index` (it died; its connections with it)."""
        with self._lock:
            for slot in range(self.slots):
                self._counts[slot * self.workers + index] = 0

    def _total(self, slot: int) -> int:
        start = slot * self.workers
        return sum(self._counts[start : start + self.workers])

    def _find(self, key: bytes, *, claim: bool) -> int | None:
        """Return the slot of `key`; with `claim`, take a free one for a new key."""
        start = zlib.crc32(key) % self.slots
        free = None
        for probe in range(self.slots):
            slot = (start + probe) % self.slots
            held = bytes(self._keys[slot * KEY : (slot + 1) * KEY])
            if held == key:
                return slot
            if held == bytes(KEY):  # never used: the key is not further along
                break
            if free is None and self._total(slot) == 0:
                free = slot
        else:
            slot = None
        if not claim:
            return None
        if free is None:
            if slot is None:
                return None
            free = slot
        self._keys[free * KEY : (free + 1) * KEY] = key
        return free
