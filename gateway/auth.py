"""Identity at the upgrade: HS256 JWTs carrying tenant, user id and role."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ROLES = ("visitor", "agent", "service")
ALGORITHMS = ["HS256"]
MAX_ID_LEN = 128


class AuthError(Exception):
    """Why a token was refused; shown to the client in the 401 body."""


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    user: str
    role: str
    groups: tuple[str, ...] = ("default",)
    capacity: int | None = None
    expires: float = 0.0  # the token's `exp`, Unix seconds: the connection ends then unless refreshed


def _ident(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise AuthError(f"claim {name!r} must be a non-empty string of at most {MAX_ID_LEN} characters")
    return value


def verify(token: str, secret: str, *, issuer: str = "", tenant: str | None = None) -> Identity:
    """The identity a signed token carries.

    Raises AuthError (its text says why, for the 401 body or the `unauthorized` error) for a
    missing, badly signed or expired token, a missing `exp` or `sub`, bad claims, or a tenant
    other than `tenant` when one is given.
    """
    if not token:
        raise AuthError("missing token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            options={"require": ["exp", "sub"]},
            issuer=issuer or None,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.PyJWTError as e:
        raise AuthError(f"invalid token: {e}") from None
    ident = Identity(
        tenant=_ident(claims.get("tenant"), "tenant"),
        user=_ident(claims.get("sub"), "sub"),
        role=claims.get("role"),
        groups=tuple(claims.get("groups") or ("default",)),
        capacity=claims.get("capacity"),
        expires=float(claims["exp"]),
    )
    if ident.role not in ROLES:
        raise AuthError(f"claim 'role' must be one of {', '.join(ROLES)}")
    if not all(isinstance(g, str) and 0 < len(g) <= MAX_ID_LEN for g in ident.groups):
        raise AuthError("claim 'groups' must be a list of short strings")
    if ident.capacity is not None and (not isinstance(ident.capacity, int) or not 0 <= ident.capacity <= 1000):
        raise AuthError("claim 'capacity' must be an integer 0..1000")
    if tenant is not None and tenant != ident.tenant:
        raise AuthError("token is for another tenant")
    return ident


def mint(
    secret: str,
    *,
    tenant: str,
    user: str,
    role: str,
    ttl_s: float = 12 * 3600,
    groups: list[str] | None = None,
    capacity: int | None = None,
    issuer: str = "",
) -> str:
    """Sign a token; used by development nodes, tests and the bench."""
    now = int(time.time())
    claims: dict[str, object] = {"tenant": tenant, "sub": user, "role": role, "iat": now, "exp": now + int(ttl_s)}
    if groups:
        claims["groups"] = list(groups)
    if capacity is not None:
        claims["capacity"] = capacity
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=ALGORITHMS[0])
