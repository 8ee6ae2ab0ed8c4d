"""Who handles a conversation: assignment policy, queue, transfer, sticky return, agent loss."""

from .model import Agent, Conversation
from .ports import AgentsAndQueue, ConversationState, Locks, RoutingStore
from .router import Router, RoutingError, RoutingSink

__all__ = ["Agent", "AgentsAndQueue", "Conversation", "ConversationState", "Locks", "Router", "RoutingError",
           "RoutingSink", "RoutingStore"]
