"""The Lua scripts (scripts/*.lua): each atomic step of the Redis ports, one file each."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_DIR = Path(__file__).resolve().parent / "scripts"
# Scripts that use the agent helpers (eligible, reindex, in_group) get agent_lib.lua in front.
_WITH_AGENT_LIB = {"upsert_agent", "reserve", "release"}


@cache
def lua(name: str) -> str:
    """The source of script `name` (scripts/<name>.lua), with its library when it needs one."""
    text = (_DIR / f"{name}.lua").read_text()
    if name in _WITH_AGENT_LIB:
        text = (_DIR / "agent_lib.lua").read_text() + text
    return text
