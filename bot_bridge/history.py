"""History trimming to a token budget that keeps business entities first, then recency."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from .base import Turn, cjk_count

# Things a support conversation must not forget: order numbers, SKUs, invoices,
# returns, parcel tracking numbers, long digit runs (phone, order ids).
DEFAULT_ENTITY_PATTERNS: tuple[str, ...] = (
    r"#\d{3,}",  # #12345
    r"\b(?:ORD|ORDER|SKU|INV|RMA|PO|TRK)[-_#: ]?(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,}\b",  # ORD-2024-001, SKU-AB12
    r"\b[A-Z]{2}\d{9}[A-Z]{2}\b",  # UPU parcel ids: RR123456789CN
    r"\b1Z[0-9A-Z]{16}\b",  # UPS
    r"\d{6,}",  # long digit runs (no \b: CJK text has no word boundaries)
)

MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """Rough token count: one per CJK character, one per ~4 other characters."""
    cjk = cjk_count(text)
    return cjk + math.ceil((len(text) - cjk) / 4)


def compile_entities(patterns: Iterable[str] | None = None) -> re.Pattern[str]:
    """One case-insensitive regex that matches any business entity."""
    pats = list(patterns) if patterns is not None else list(DEFAULT_ENTITY_PATTERNS)
    return re.compile("|".join(f"(?:{p})" for p in pats), re.IGNORECASE)


_DEFAULT_RE = compile_entities()


def has_entity(text: str, entity_re: re.Pattern[str] | None = None) -> bool:
    """Does the text mention an order number, SKU, tracking number, long digit run?"""
    return (entity_re or _DEFAULT_RE).search(text) is not None


def trim_history(
    history: Sequence[Turn],
    budget_tokens: int,
    entity_re: re.Pattern[str] | None = None,
) -> list[Turn]:
    """The turns to resend, in their original order, within ``budget_tokens``.

    Selection order: turns that carry business entities (newest first), then the
    remaining turns newest first. A turn that does not fit is skipped (a shorter,
    older one may still fit). The result keeps chronological order.
    """
    if budget_tokens <= 0 or not history:
        return []
    entity_re = entity_re or _DEFAULT_RE
    idx = list(range(len(history) - 1, -1, -1))  # newest first
    with_entities = [i for i in idx if entity_re.search(history[i].text)]
    marked = set(with_entities)
    rest = [i for i in idx if i not in marked]
    chosen: set[int] = set()
    used = 0
    for i in with_entities + rest:
        cost = estimate_tokens(history[i].text) + MESSAGE_OVERHEAD_TOKENS
        if used + cost <= budget_tokens:
            chosen.add(i)
            used += cost
    return [history[i] for i in sorted(chosen)]
