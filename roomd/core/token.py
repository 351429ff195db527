"""AID tokens: HS256 JWTs with `sub` = the AID (PyJWT signs and checks them).

Pure: the caller passes the secret (from `roomd.datadir`) and the wall-clock
time, so a token's validity is decided here and tested without a clock.
"""

from __future__ import annotations

import attrs
import jwt

from roomd.core.message import validate_aid
from roomd.errors import ErrorCode, ProtocolError

ALGORITHM = "HS256"
# How long a token lives when nobody says (`roomd token`, `POST /v1/tokens`).
DEFAULT_TTL = 24 * 3600


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
