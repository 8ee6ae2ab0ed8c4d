"""Contacts on Redis: one hash per tenant and channel, external id -> the record's JSON (`P:{k:T}:contacts:C`)."""

from __future__ import annotations

from typing import Any

import orjson

from ..ports import Contacts
from .errors import available_errors
from .keys import q


class RedisContacts(Contacts):
    r: Any
    _p: str

    def _contacts_key(self, tenant: str, channel: str) -> str:
        return f"{self._p}:{{k:{q(tenant)}}}:contacts:{q(channel)}"

    @available_errors
    async def contact(self, tenant: str, channel: str, external_id: str) -> dict[str, Any] | None:
        raw = await self.r.hget(self._contacts_key(tenant, channel), external_id)
        return None if raw is None else orjson.loads(raw)

    @available_errors
    async def save_contact(self, tenant: str, channel: str, external_id: str, record: dict[str, Any]) -> None:
        await self.r.hset(self._contacts_key(tenant, channel), external_id, orjson.dumps(record))

    @available_errors
    async def contacts(self, tenant: str, channel: str) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(self._contacts_key(tenant, channel))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}
