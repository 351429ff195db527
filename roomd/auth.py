"""AID tokens: HS256 JWTs with `sub` = the AID, and the secret that signs them.

The secret is `ROOMD_TOKEN_SECRET` when set, else the file `<data-dir>/token-secret`,
created with mode 0600 on first use. `roomd serve` and `roomd token` share the rule,
so a token printed by one is accepted by the other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import attrs
import jwt

from roomd.errors import ConfigError, ErrorCode, ProtocolError
from roomd.message import validate_aid

ALGORITHM = "HS256"
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


def mint_token(secret: str, aid: str, *, now: float, ttl: float) -> tuple[str, int]:
    """Return a token for `aid` valid for `ttl` seconds from `now`, and its `exp`."""
    validate_aid(aid)
    expires_at = int(now + ttl)
    claims = {"sub": aid, "iat": int(now), "exp": expires_at}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires_at


@attrs.frozen
class Identity:
    """A verified token: who the client is and when the proof runs out (Unix s)."""

    aid: str
    expires_at: int


def verify_token(secret: str, token: str, *, now: float) -> Identity:
    """Return the identity a token proves at wall-clock time `now`.

    Raises `ProtocolError(unauthenticated)` for a bad signature, a missing `sub` or
    `exp`, an expired or not-yet-valid token, or a `sub` that is not a valid AID.
    """
    # Time claims are checked here against `now`: PyJWT would use its own clock.
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={
                "require": ["sub", "exp"],
                "verify_sub": False,
                "verify_iat": False,
                "verify_exp": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise ProtocolError(ErrorCode.UNAUTHENTICATED, f"token rejected: {_reason(exc)}") from None
    exp = claims["exp"]
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
        raise ProtocolError(ErrorCode.UNAUTHENTICATED, "token has expired")
    nbf = claims.get("nbf", now)
    if not isinstance(nbf, int | float) or isinstance(nbf, bool) or nbf > now:
        raise ProtocolError(ErrorCode.UNAUTHENTICATED, "token is not yet valid (nbf)")
    try:
        aid = validate_aid(claims["sub"], "sub")
    except ProtocolError as exc:
        raise ProtocolError(ErrorCode.UNAUTHENTICATED, f"token subject: {exc.message}") from None
    return Identity(aid=aid, expires_at=exp)


def _reason(exc: jwt.PyJWTError) -> str:
    # PyJWT's messages never include the token itself; keep them short and lowercase.
    text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:120]
