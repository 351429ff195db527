"""The files of a data dir that are not the room store: the token secret and the API key.

The token secret is `ROOMD_TOKEN_SECRET` when set, else the file
`<data-dir>/token-secret`; the API key is `ROOMD_API_KEY`, else `<data-dir>/api-key`.
Each file is created with mode 0600 on first use. `roomd serve`, `roomd token`
and `roomd api-key` share these rules, so a token printed by one is accepted by
the other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from roomd.errors import ConfigError

SECRET_FILE = "token-secret"
SECRET_ENV = "ROOMD_TOKEN_SECRET"
MIN_SECRET = 32
API_KEY_FILE = "api-key"
API_KEY_ENV = "ROOMD_API_KEY"


def read_or_create_secret(path: Path) -> str:
    """Return the secret stored at `path`, creating it (mode 0600) when missing.

    The file appears whole or not at all (written aside, then linked into place),
    so a crash or a second process starting at the same moment never leaves an
    empty secret behind. Raises `ConfigError` for a file too short to be a secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(48))
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(draft, path)
        finally:
            draft.unlink()
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET:
        raise ConfigError(f"{path} holds no usable secret (under {MIN_SECRET} characters)")
    return secret


def load_token_secret(data_dir: Path) -> str:
    """Return the token secret: `ROOMD_TOKEN_SECRET`, else the data dir's secret file."""
    return os.environ.get(SECRET_ENV) or read_or_create_secret(data_dir / SECRET_FILE)


def load_api_key(data_dir: Path) -> str:
    """Return the server API key: `ROOMD_API_KEY`, else the data dir's `api-key` file."""
    return os.environ.get(API_KEY_ENV) or read_or_create_secret(data_dir / API_KEY_FILE)
