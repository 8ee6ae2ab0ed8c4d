"""Shared-state seam: `make_coordinator(cfg)` returns the configured implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Agent, Conversation, Coordinator, StaleState, Unavailable
from .retention import Retention

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Agent", "Conversation", "Coordinator", "StaleState", "Unavailable", "make_coordinator"]


def make_coordinator(cfg: Config) -> Coordinator:
    if cfg.coordinator == "embedded":
        from .embedded import EmbeddedCoordinator, Store

        store = None if cfg.data_dir.strip().lower() == "none" else Store(cfg.data_dir, fsync=cfg.store_fsync,
                                                                                  max_bytes=cfg.store_max_mb << 20)
        return EmbeddedCoordinator(cfg.node_id, history_keep=cfg.history_keep, lock_segments=cfg.lock_segments,
                                   store=store, retention=Retention(cfg.retention_days, cfg.tenant_retention_days),
                                   closed_keep_s=cfg.closed_keep_s, memory_budget_bytes=cfg.memory_budget_mb << 20)
    from .postgres import PostgresArchive
    from .redis import RedisCoordinator

    return RedisCoordinator(cfg.node_id, cfg.redis_url, cluster=cfg.redis_cluster, ack_on_disk=cfg.redis_ack == "aof",
                            history_keep=cfg.history_keep, lock_segments=cfg.lock_segments,
                            heartbeat_s=cfg.node_heartbeat_s, node_ttl_s=cfg.node_ttl_s,
                            retention=Retention(cfg.retention_days, cfg.tenant_retention_days),
                            archive=PostgresArchive(cfg.archive_url) if cfg.archive_url else None,
                            archive_after_s=cfg.archive_after_s, archive_poll_s=cfg.archive_poll_s)
