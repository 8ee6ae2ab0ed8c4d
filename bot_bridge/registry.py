"""Finding backend factories: built-in names, the ``chatgw.bot_backends`` entry points, import paths.

A factory is called as ``factory(name, options)`` with the backend's name and
the non-bridge keys of its ``[bots.backends.NAME]`` table, and returns a
:class:`~bot_bridge.base.BotBackend`. A class whose ``__init__`` takes
``(name, options)`` is a factory.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from .base import BackendFactory, BotBackend
from .config import ConfigError

ENTRY_POINT_GROUP = "chatgw.bot_backends"

BUILTIN: dict[str, str] = {
    "openai": "bot_bridge.openai:OpenAIBackend",
    "dify": "bot_bridge.dify:DifyBackend",
    "coze": "bot_bridge.coze:CozeBackend",
    "webhook": "bot_bridge.webhook:WebhookBackend",
    "faq": "bot_bridge.faq:FaqBackend",
}


def load_object(path: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"backend type {path!r}: an import path looks like 'package.module:Factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"backend type {path!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"backend type {path!r}: {module_name!r} has no {attr!r}") from exc
    return obj


def find_factory(type_name: str) -> BackendFactory:
    """Built-in name, then entry point of group ``chatgw.bot_backends``, then ``module:attr``."""
    if type_name in BUILTIN:
        return load_object(BUILTIN[type_name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == type_name:
            return ep.load()
    if ":" in type_name:
        return load_object(type_name)
    raise ConfigError(
        f"backend type {type_name!r}: not built in ({', '.join(BUILTIN)}), no entry point of that name in "
        f"group {ENTRY_POINT_GROUP!r}, and not an import path 'module:Factory'"
    )


def create_backend(name: str, type_name: str, options: dict[str, Any]) -> BotBackend:
    """Instantiate and check the result has the BotBackend shape."""
    factory = find_factory(type_name)
    backend = factory(name, dict(options))
    missing = [m for m in ("stream", "cancel") if not callable(getattr(backend, m, None))]
    if missing:
        raise ConfigError(f"backend {name!r} ({type_name}): the object has no {' / '.join(missing)} method")
    if not getattr(backend, "name", None):
        try:
            backend.name = name
        except AttributeError:
            pass
    return backend
