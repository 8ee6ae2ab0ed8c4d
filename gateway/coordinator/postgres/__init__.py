"""The cluster's archive on PostgreSQL (docs/archive.md): where Redis's conversations go to stay."""

from .archive import ArchivedEntry, PostgresArchive

__all__ = ["ArchivedEntry", "PostgresArchive"]
