"""Serving the server API: when roomd warns that the API key would travel in the clear."""

from __future__ import annotations

import pytest

from roomd.api.http import clear_text_warning


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [
        ("127.0.0.1", False, False),
        ("127.0.0.2", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("10.1.2.3", False, True),
        ("api.example.com", False, True),
        ("0.0.0.0", True, False),
        ("10.1.2.3", True, False),
    ],
)
def test_only_an_api_beyond_loopback_without_tls_is_warned_about(
    host: str, tls: bool, warned: bool
) -> None:
    """Loopback or TLS: no warning; anything else names the host and the TLS flags."""
    warning = clear_text_warning(host, tls=tls)
    assert (warning is not None) is warned
    if warning is not None:
        assert host in warning and "--api-tls-cert" in warning
