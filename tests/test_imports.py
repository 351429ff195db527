"""What a single node loads: none of the cluster's code (its objects would cost every GC scan)."""

from __future__ import annotations

import subprocess
import sys

CLUSTER_MODULES = ("coredis", "roomd.cluster", "roomd.daemon.cluster", "roomd.daemon.redis_link")
PROBE = f"""
import sys
import roomd.cli
loaded = sorted(m for m in sys.modules if m.startswith({CLUSTER_MODULES!r}))
print(loaded)
"""


def test_the_roomd_command_loads_no_cluster_code_until_a_node_joins_a_cluster() -> None:
    """Importing the CLI (as `roomd serve` without --cluster does) loads no coredis, no cluster."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert probe.stdout.strip() == "[]"
