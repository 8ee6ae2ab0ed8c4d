"""ApiKeys on Redis: one hash, key id -> the key's JSON (`P:apikeys`; keys.py)."""

from __future__ import annotations

from typing import Any

import orjson

from ..ports import ApiKeys
from .errors import available_errors


class RedisApiKeys(ApiKeys):
    r: Any
    _p: str

    def _api_keys_key(self) -> str:
        return f"{self._p}:apikeys"

    @available_errors
    async def save_api_key(self, key: Any) -> None:
        await self.r.hset(self._api_keys_key(), key.id, orjson.dumps(key.to_dict()))

    @available_errors
    async def api_key(self, key_id: str) -> Any | None:
        from ...api_keys import ApiKey

        raw = await self.r.hget(self._api_keys_key(), key_id)
        return None if raw is None else ApiKey.from_dict(orjson.loads(raw))

    @available_errors
    async def api_keys(self, tenant: str) -> list[Any]:
        from ...api_keys import ApiKey

        keys = [ApiKey.from_dict(orjson.loads(v)) for v in (await self.r.hgetall(self._api_keys_key())).values()]
        return sorted((k for k in keys if k.tenant == tenant), key=lambda k: (k.created_ms, k.id))

    @available_errors
    async def delete_api_key(self, tenant: str, key_id: str) -> bool:
        key = await self.api_key(key_id)
        if key is None or key.tenant != tenant:
            return False
        return bool(await self.r.hdel(self._api_keys_key(), key_id))
