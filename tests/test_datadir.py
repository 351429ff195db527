"""The data dir's secret files: the token secret and the API key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from roomd.core.token import mint_token, verify_token
from roomd.datadir import load_token_secret, read_or_create_secret
from roomd.errors import ConfigError

from .conftest import SECRET

# A fixed wall clock far from the real one.
NOW = 1_500_000_000


def test_the_secret_file_is_created_private_and_reused(tmp_path: Path) -> None:
    """The first call creates the secret with mode 0600 (directories too); later calls reuse it."""
    path = tmp_path / "data" / "nested" / "token-secret"
    secret = read_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret.encode()) >= 32
    assert read_or_create_secret(path) == secret
    assert read_or_create_secret(tmp_path / "other") != secret


def test_an_existing_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    """A secret written by an operator (with a newline) is used as is."""
    path = tmp_path / "token-secret"
    path.write_text(SECRET + "\n")
    assert read_or_create_secret(path) == SECRET


def test_an_empty_secret_file_is_refused_not_used(tmp_path: Path) -> None:
    """A secret file left empty (or too short) stops roomd instead of opening it to anyone."""
    path = tmp_path / "api-key"
    for content in ("", "short\n"):
        path.write_text(content)
        with pytest.raises(ConfigError, match="no usable secret"):
            read_or_create_secret(path)


def test_creating_the_secret_leaves_no_draft_behind(tmp_path: Path) -> None:
    """Only the secret file itself remains in the directory after it is created."""
    read_or_create_secret(tmp_path / "token-secret")
    assert [p.name for p in tmp_path.iterdir()] == ["token-secret"]


def test_load_token_secret_uses_the_data_dir_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ROOMD_TOKEN_SECRET the secret lives in <data-dir>/token-secret."""
    monkeypatch.delenv("ROOMD_TOKEN_SECRET", raising=False)
    secret = load_token_secret(tmp_path)
    assert (tmp_path / "token-secret").read_text().strip() == secret
    tok, _ = mint_token(load_token_secret(tmp_path), "alice", now=NOW, ttl=60)
    assert verify_token(secret, tok, now=NOW).aid == "alice"


def test_roomd_token_secret_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROOMD_TOKEN_SECRET, when set, is the secret; no file is created."""
    monkeypatch.setenv("ROOMD_TOKEN_SECRET", SECRET)
    assert load_token_secret(tmp_path / "d") == SECRET
    assert not (tmp_path / "d").exists()


def test_an_empty_roomd_token_secret_falls_back_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty ROOMD_TOKEN_SECRET is no secret at all: the file is used."""
    monkeypatch.setenv("ROOMD_TOKEN_SECRET", "")
    assert load_token_secret(tmp_path) == (tmp_path / "token-secret").read_text().strip()
