"""Messaging channels beyond the web widget (docs/channels.md): a platform's users as visitors.

`base.py` holds what every channel shares (the `Channel` interface, contacts, the session that
relays a conversation's entries out); `telegram.py` and `http_channel.py` are the two platforms;
`registry.py` builds the configured ones.
"""

from .base import Channel
from .registry import Channels

__all__ = ["Channel", "Channels"]
