"""The supervisor page (admin token): live queues, agents, conversations by state, nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


def add_routes(app: web.Application, admin_scope: Callable[[web.Request], str | None],
               node_of: Callable[[web.Request], Any]) -> None:
    """Register the supervisor's page and its JSON (placeholder: being built)."""
