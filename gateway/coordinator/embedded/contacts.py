"""Contacts in one process: a dictionary, written ahead to the store where there is one."""

from __future__ import annotations

from typing import Any

import orjson

from ..ports import Contacts
from .store import Store


class MemoryContacts(Contacts):
    _store: Store | None

    def _init_contacts(self) -> None:
        self._contacts: dict[tuple[str, str, str], dict[str, Any]] = {}

    def _restore_contacts(self) -> None:
        if self._store is not None:
            self._contacts = {(t, c, e): orjson.loads(doc) for t, c, e, doc in self._store.load_contacts()}

    async def contact(self, tenant: str, channel: str, external_id: str) -> dict[str, Any] | None:
        rec = self._contacts.get((tenant, channel, external_id))
        return dict(rec) if rec is not None else None

    async def save_contact(self, tenant: str, channel: str, external_id: str, record: dict[str, Any]) -> None:
        if self._store is not None:
            self._store.save_contact(tenant, channel, external_id, orjson.dumps(record))
        self._contacts[(tenant, channel, external_id)] = dict(record)

    async def contacts(self, tenant: str, channel: str) -> dict[str, dict[str, Any]]:
        return {e: dict(r) for (t, c, e), r in self._contacts.items() if t == tenant and c == channel}
