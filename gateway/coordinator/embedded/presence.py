"""Presence and the node bus for one node: it holds everyone, so nothing is remote."""

from __future__ import annotations

from typing import Any

from ..ports import DeliveryHandler, NodeBus, Presence


class MemoryPresence(NodeBus, Presence):
    def _init_presence(self) -> None:
        self._present: set[tuple[str, str]] = set()
        self._handler: DeliveryHandler | None = None

    async def deliver_remote(self, tenant: str, users: list[str], env: Any, encoded: bytes | None = None) -> None:
        return None

    def on_delivery(self, handler: DeliveryHandler) -> None:
        self._handler = handler

    async def set_present(self, tenant: str, user: str, present: bool, role: str = "") -> int:
        if present:
            self._present.add((tenant, user))
        else:
            self._present.discard((tenant, user))
        return int((tenant, user) in self._present)

    async def is_present(self, tenant: str, user: str) -> bool:
        return (tenant, user) in self._present
