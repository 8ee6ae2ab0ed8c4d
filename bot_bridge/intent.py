"""Does the visitor ask for a human? English and Chinese phrases, matched without a backend call."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# English: whole words/phrases ("agent" matches, "agency" and "humanity" do not).
EN_PHRASES: tuple[str, ...] = (
    "human",
    "a human",
    "humans",
    "agent",
    "agents",
    "real person",
    "live person",
    "live agent",
    "live chat",
    "real human",
    "representative",
    "operator",
    "customer service",
    "customer support",
    "someone real",
    "talk to someone",
    "speak to someone",
    "speak with someone",
    "a person",
    "talk to a person",
    "speak to a person",
    "talk to a human",
)
# Chinese: substrings (no word boundaries in CJK text).
ZH_PHRASES: tuple[str, ...] = (
    "人工",
    "转人工",
    "人工客服",
    "客服",
    "真人",
    "找人",
    "接线员",
    "客服人员",
    "工作人员",
)


class HandoffDetector:
    """Matches a visitor's message against the handoff phrases (case- and width-insensitive)."""

    def __init__(self, extra: Iterable[str] = (), *, replace_defaults: bool = False) -> None:
        en = [] if replace_defaults else list(EN_PHRASES)
        zh = [] if replace_defaults else list(ZH_PHRASES)
        for phrase in extra:
            p = unicodedata.normalize("NFKC", phrase).casefold().strip()
            if not p:
                continue
            (zh if re.search(r"[^\x00-\x7f]", p) else en).append(p)
        parts = []
        if en:
            parts.append(r"\b(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in sorted(set(en), key=len, reverse=True)) + r")\b")
        if zh:
            parts.append("|".join(re.escape(p) for p in sorted(set(zh), key=len, reverse=True)))
        self._re = re.compile("|".join(parts)) if parts else None

    def asks_for_human(self, text: str) -> bool:
        if self._re is None:
            return False
        return self._re.search(unicodedata.normalize("NFKC", text).casefold()) is not None
