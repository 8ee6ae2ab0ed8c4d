"""Who handles a conversation: assignment policy, queue, transfer, sticky return, agent loss."""

from .router import Router, RoutingSink

__all__ = ["Router", "RoutingSink"]
