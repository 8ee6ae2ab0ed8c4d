"""bot: conversations answered by a local bot backend while humans chat. Not built yet."""

from __future__ import annotations

from typing import Any

STATUS = "not yet: needs bot_bridge"


def run(ctx: Any = None) -> dict[str, Any]:
    return {"status": STATUS}
