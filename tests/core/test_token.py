"""AID tokens (PROTOCOL.md section 3): minted and verified against a given `now`."""

from __future__ import annotations

import warnings
from typing import Any

import jwt
import pytest

from roomd.core.token import Identity, mint_token, verify_token
from roomd.errors import ErrorCode, ProtocolError

from ..conftest import SECRET

# A fixed wall clock far from the real one: verification must use `now`, not time.time().
NOW = 1_500_000_000


def token(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    """Return a JWT with exactly `claims`."""
    return jwt.encode(claims, secret, algorithm=algorithm)


def unauthenticated(tok: str, *, now: float = NOW, secret: str = SECRET) -> str:
    """Assert `tok` is refused with `unauthenticated`; return the error message."""
    with pytest.raises(ProtocolError) as info:
        verify_token(secret, tok, now=now)
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    return info.value.message


@pytest.mark.parametrize("aid", ["alice", "a" * 128, "Ünï cødé", "did:key:z6Mk😀"])
def test_a_minted_token_verifies_as_its_aid_until_it_expires(aid: str) -> None:
    """mint_token and verify_token round trip; expiresAt is now + ttl in whole seconds."""
    tok, expires_at = mint_token(SECRET, aid, now=NOW + 0.7, ttl=3600)
    assert expires_at == NOW + 3600
    assert verify_token(SECRET, tok, now=NOW) == Identity(aid=aid, expires_at=NOW + 3600)
    assert verify_token(SECRET, tok, now=NOW + 3599.9).aid == aid
    assert "expired" in unauthenticated(tok, now=NOW + 3600)


def test_minted_claims_are_sub_iat_exp() -> None:
    """A minted token carries sub, iat and exp, signed HS256."""
    tok, _ = mint_token(SECRET, "alice", now=NOW, ttl=60)
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert claims == {"sub": "alice", "iat": NOW, "exp": NOW + 60}


@pytest.mark.parametrize("aid", ["", "bad\naid", "a" * 129, "\x00"])
def test_mint_token_refuses_an_invalid_aid(aid: str) -> None:
    """Only a valid AID (1..128 printable characters) gets a token."""
    with pytest.raises(ProtocolError):
        mint_token(SECRET, aid, now=NOW, ttl=60)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    """A bad signature is unauthenticated."""
    other = "another-secret-0123456789abcdef0123456789"
    unauthenticated(token({"sub": "alice", "exp": NOW + 60}, secret=other))


def test_a_tampered_token_is_refused() -> None:
    """Changing the payload of a signed token breaks its signature."""
    good = token({"sub": "alice", "exp": NOW + 60})
    forged = token({"sub": "mallory", "exp": NOW + 60}, secret="x" * 32)
    header, _, signature = good.split(".")
    unauthenticated(".".join([header, forged.split(".")[1], signature]))


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_only_hs256_is_accepted(algorithm: str) -> None:
    """Another HMAC algorithm, even with the right secret, is refused."""
    with warnings.catch_warnings():  # PyJWT wants longer keys for HS384/HS512
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        tok = token({"sub": "alice", "exp": NOW + 60}, algorithm=algorithm)
    unauthenticated(tok)


def test_an_unsigned_token_is_refused() -> None:
    """alg none is never accepted."""
    unauthenticated(jwt.encode({"sub": "alice", "exp": NOW + 60}, None, algorithm="none"))


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "e30.e30.", "ünï.cødé.x"])
def test_a_token_that_is_not_a_jwt_is_refused(garbage: str) -> None:
    """A malformed token is unauthenticated, not a crash."""
    unauthenticated(garbage)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW + 60},
        {"sub": "alice"},
        {"sub": "alice", "exp": "tomorrow"},
        {"sub": "alice", "exp": NOW + 60.5},
        {"sub": "alice", "exp": True},
    ],
    ids=["no-sub", "no-exp", "exp-string", "exp-float", "exp-bool"],
)
def test_missing_or_malformed_sub_or_exp_is_refused(claims: dict[str, Any]) -> None:
    """sub and exp are required, exp an integer."""
    unauthenticated(token(claims))


@pytest.mark.parametrize("exp", [NOW, NOW - 1, 0])
def test_an_expired_token_is_refused(exp: int) -> None:
    """A token whose exp is not after `now` has expired."""
    assert "expired" in unauthenticated(token({"sub": "alice", "exp": exp}))


def test_expiry_is_judged_at_now_not_the_real_clock() -> None:
    """A token that expired long ago in real time is valid at an earlier `now`, and vice versa."""
    assert verify_token(SECRET, token({"sub": "a", "exp": NOW + 1}), now=NOW).aid == "a"
    far = 4_000_000_000
    unauthenticated(token({"sub": "a", "exp": far}), now=far + 1)


@pytest.mark.parametrize(
    ("nbf", "ok"), [(NOW + 1, False), (NOW + 3_600, False), (NOW, True), (NOW - 10, True)]
)
def test_a_token_is_valid_from_its_nbf(nbf: int, ok: bool) -> None:
    """nbf in the future (relative to `now`) is refused; at or before `now` it is fine."""
    tok = token({"sub": "alice", "exp": NOW + 7_200, "nbf": nbf})
    if ok:
        assert verify_token(SECRET, tok, now=NOW).aid == "alice"
    else:
        unauthenticated(tok)


def test_iat_in_the_future_is_ignored() -> None:
    """iat is optional and not checked (clock skew between minting hosts)."""
    tok = token({"sub": "alice", "exp": NOW + 60, "iat": NOW + 30})
    assert verify_token(SECRET, tok, now=NOW).aid == "alice"


@pytest.mark.parametrize("sub", ["", "a" * 129, "line\nbreak", "\x1b[31m", 42, None, ["a"]])
def test_a_sub_that_is_not_a_valid_aid_is_refused(sub: object) -> None:
    """sub must be 1..128 printable characters; anything else is unauthenticated."""
    unauthenticated(token({"sub": sub, "exp": NOW + 60}))
