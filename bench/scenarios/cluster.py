"""cluster: several nodes behind the Redis coordinator. Not built yet."""

from __future__ import annotations

from typing import Any

STATUS = "not yet: cluster mode is being built"


def run(ctx: Any = None) -> dict[str, Any]:
    return {"status": STATUS}
