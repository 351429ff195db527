"""Schemathesis against a live `roomd serve`: the server API keeps to its OpenAPI document.

The document is loaded from the running server's `/openapi.json` (so what is
checked is what is served), and every operation gets generated requests, valid
and invalid, each answered as the document says: no 5xx, a documented status and
content type, and a body that matches the documented schema.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..e2e_support import ERROR_LINE, RoomdProcess, clean_env

pytestmark = pytest.mark.e2e

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]
EXAMPLES = 30
# Bounds the whole schemathesis run (it takes about 10 s on 2 cores).
RUN_TIMEOUT = 120


@pytest.fixture
def roomd_api(tmp_path: Path) -> Iterator[tuple[RoomdProcess, str]]:
    """Run `roomd serve` with its API; yield it and the API key it generated."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    process = RoomdProcess.start(data_dir, log_name="roomd-fuzz")
    try:
        key_file = data_dir / "api-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        yield process, key_file.read_text().strip()
    finally:
        status = process.stop()
        errors = [line for line in process.logs().splitlines() if ERROR_LINE.search(line)]
        assert not errors, f"roomd logged errors: {errors}"
        assert status == 0


def test_server_api_keeps_to_its_openapi_document(
    roomd_api: tuple[RoomdProcess, str], tmp_path: Path
) -> None:
    """Generated requests to every operation get documented statuses, types and bodies, no 5xx."""
    process, key = roomd_api
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{process.api_url}/openapi.json"]
    command += ["--header", f"Authorization: Bearer {key}", "--checks", ",".join(CHECKS)]
    command += ["--max-examples", str(EXAMPLES), "--request-timeout", "5"]
    command += ["--generation-database", "none", "--no-color"]
    # Its own directory: no schemathesis.toml of ours is picked up, no report left behind.
    run = subprocess.run(
        command,
        cwd=tmp_path,
        env=clean_env(None),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # Every operation of the document was exercised.
    assert "Tested: 10" in run.stdout, run.stdout[-3000:]
