"""API keys for the REST API (docs/api.md): tenant-scoped, with scopes; only a hash is kept.

A key is shown once, when it is created: `cgk_<id>_<secret>`. The store keeps the id, the tenant,
a name, the scopes and SHA-256 of the secret (the secret is 32 random bytes, so a plain hash is
enough: nothing to guess from it, and checking it costs microseconds; GitHub's tokens work the same
way). Checking compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

PREFIX = "cgk_"
# What a key may do; a route names the scope it needs (api_http.py).
SCOPES = ("conversations:read", "conversations:write", "messages:write", "agents:read", "queues:read")


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: no secret, only its hash (hex SHA-256)."""

    id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    secret_hash: str
    created_ms: int

    def public(self) -> dict[str, Any]:
        """What the admin API shows of a key (never its hash)."""
        return {"id": self.id, "tenant": self.tenant, "name": self.name, "scopes": list(self.scopes),
                "created_ms": self.created_ms}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ApiKey:
        return cls(**{**d, "scopes": tuple(d["scopes"])})


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(tenant: str, name: str, scopes: list[str] | tuple[str, ...]) -> tuple[str, ApiKey]:
    """A new key for `tenant`: (the token to hand out once, the record to store). ValueError on an unknown scope."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}" + (f"; not {', '.join(bad)}" if bad else ""))
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = ApiKey(key_id, tenant, name, tuple(dict.fromkeys(scopes)), _hash(secret), int(time.time() * 1000))
    return f"{PREFIX}{key_id}_{secret}", key


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a token in the `cgk_<id>_<secret>` form, else None."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    return (key_id, secret) if sep and key_id and secret else None


def matches(key: ApiKey, secret: str) -> bool:
    """Is `secret` the key's? (constant time)"""
    return hmac.compare_digest(key.secret_hash, _hash(secret))
