"""Idempotency cache for client message ids (native core with a pure-Python reference)."""

from .reference import ReferenceDedup
from .window import NATIVE_AVAILABLE, Dedup, make_dedup

__all__ = ["NATIVE_AVAILABLE", "Dedup", "ReferenceDedup", "make_dedup"]
