"""Identity at the upgrade: HS256 JWTs carrying tenant, user id and role."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

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


def key_id(secret: str) -> str:
    """The `kid` a token signed with `secret` carries in its header (RFC 7515 4.1.4): a digest, so
    the id names the key without revealing it."""
    return "k" + hashlib.sha256(secret.encode()).hexdigest()[:12]


class KeyRing:
    """The secrets a token may be signed with: the current one; those a reload replaced, each until
    its grace period ends (a key rotation without refusing live tokens); and `previous`, secrets the
    configuration still lists (`jwt_previous_secrets`: a rotation's window that outlives a restart).

    A token whose header `kid` names one of ours is checked against that key only; one without a
    `kid`, or with one from another issuer's scheme, against each accepted key in turn.
    """

    def __init__(self, secret: str, previous: list[str] | None = None) -> None:
        self.current = secret
        self._kid = key_id(secret)
        self.previous = list(previous or ())
        self._retired: dict[str, tuple[str, float]] = {}  # kid -> (secret, accepted until, Unix s)

    def rotate(self, secret: str, grace_s: float, now: float | None = None) -> bool:
        """Sign with `secret` from now on; the current key stays valid for `grace_s` seconds.
        Returns False (nothing changes) when `secret` is already the current key."""
        if secret == self.current:
            return False
        now = time.time() if now is None else now
        self._retired[self._kid] = (self.current, now + grace_s)
        self._retired.pop(key_id(secret), None)
        self.current, self._kid = secret, key_id(secret)
        self._retired = {k: v for k, v in self._retired.items() if v[1] > now}
        return True

    def describe(self) -> dict[str, Any]:
        """What /admin/stats shows (ids, never secrets): the current kid, retired kids with the end of
        their grace (Unix s), how many previous secrets the configuration lists."""
        now = time.time()
        return {"current": self._kid, "previous": len(self.previous),
                "retired": [{"kid": k, "until": int(u)} for k, (_, u) in self._retired.items() if u > now]}

    def candidates(self, token: str) -> list[str]:
        """The secrets to try for `token`, by its header's `kid`. Raises AuthError for one of our
        kids whose grace period is over, or a header that is not a JWT's."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from None
        if kid == self._kid:
            return [self.current]
        now = time.time()
        retired = self._retired.get(kid) if isinstance(kid, str) else None
        if retired is not None:
            if retired[1] > now:
                return [retired[0]]
            raise AuthError("invalid token: signed with a key whose rotation grace period is over")
        return [self.current, *self.previous, *(sec for sec, until in self._retired.values() if until > now)]


def verify(token: str, secret: str | KeyRing, *, issuer: str = "", tenant: str | None = None) -> Identity:
    """The identity a signed token carries; `secret` is the key, or a KeyRing that picks it.

    Raises AuthError (its text says why, for the 401 body or the `unauthorized` error) for a
    missing, badly signed or expired token, a missing `exp` or `sub`, bad claims, or a tenant
    other than `tenant` when one is given.
    """
    if not token:
        raise AuthError("missing token")
    secrets = secret.candidates(token) if isinstance(secret, KeyRing) else [secret]
    for i, key in enumerate(secrets):
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                options={"require": ["exp", "sub"]},
                issuer=issuer or None,
            )
            break
        except jwt.InvalidSignatureError as e:
            if i + 1 == len(secrets):
                raise AuthError(f"invalid token: {e}") from None
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
    """Sign a token (its header names the key: `kid`); used by development nodes, tests and the bench."""
    now = int(time.time())
    claims: dict[str, object] = {"tenant": tenant, "sub": user, "role": role, "iat": now, "exp": now + int(ttl_s)}
    if groups:
        claims["groups"] = list(groups)
    if capacity is not None:
        claims["capacity"] = capacity
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=ALGORITHMS[0], headers={"kid": key_id(secret)})
