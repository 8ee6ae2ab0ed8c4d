"""Bot backends for the chat gateway: answer visitors first, hand off to humans when needed.

``BotBridge.from_mapping(config["bots"])`` builds the bridge; ``await bridge.answer(ctx, on_chunk)``
answers one question. Backends: OpenAI-compatible, Dify, Coze, signed webhook, built-in FAQ;
more by plugin (``"pkg.mod:Factory"`` or the ``chatgw.bot_backends`` entry point group).
See docs/bots.md.
"""

from .base import BackendError, BotBackend, BotContext, BotResult, Turn
from .bridge import BotBridge
from .config import BackendSpec, BridgeConfig, ConfigError, TenantRule

__all__ = [
    "BackendError",
    "BackendSpec",
    "BotBackend",
    "BotBridge",
    "BotContext",
    "BotResult",
    "BridgeConfig",
    "ConfigError",
    "TenantRule",
    "Turn",
]
