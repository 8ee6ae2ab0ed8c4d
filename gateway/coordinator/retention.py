"""How long closed conversations are kept (`retention_days`, `[tenant_retention_days]`; docs/store.md, step 12)."""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Retention:
    """Closed conversations are deleted `days` after they were opened (per tenant: `by_tenant`); 0 keeps them."""

    days: float = 0.0
    by_tenant: dict[str, float] = field(default_factory=dict)

    def any(self) -> bool:
        return self.days > 0 or any(v > 0 for v in self.by_tenant.values())

    def period_ms(self, tenant: str) -> int | None:
        """How long `tenant`'s closed conversations are kept after they opened (ms); None: for ever."""
        days = self.by_tenant.get(tenant, self.days)
        return int(days * DAY_MS) if days > 0 else None

    def horizon_ms(self, tenant: str, now_ms: int) -> int | None:
        """Closed conversations of `tenant` opened before this (ms) are deleted; None: kept."""
        period = self.period_ms(tenant)
        return None if period is None else now_ms - period

    def delete_at_ms(self, tenant: str, created_ms: int) -> int | None:
        """When a conversation opened at `created_ms` (ms) is deleted once closed; None: kept."""
        period = self.period_ms(tenant)
        return None if period is None else created_ms + period
