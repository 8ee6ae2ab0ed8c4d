from __future__ import annotations

import shutil

import pytest

from .support import Gateway, start_gateway


@pytest.fixture(scope="session")
def gateway() -> Gateway:
    """One development node (embedded coordinator) shared by tests that use their own tenants."""
    gw = start_gateway()
    yield gw
    gw.stop()


@pytest.fixture
def gateway_factory():
    """Start nodes with particular settings; stopped at the end of the test."""
    started: list[Gateway] = []

    def make(**settings) -> Gateway:
        gw = start_gateway(**settings)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server of our own on a free port (never a shared one)."""
    from .redis_support import start_redis

    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server of our own on a free port (tests/pg_support.py)."""
    from .pg_support import start_postgres

    server = start_postgres()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def archive_url(postgres_server):
    """A fresh database on the test PostgreSQL server: its postgresql:// URL."""
    return postgres_server.database()


@pytest.fixture(scope="session")
def redis_cluster():
    """A real three-master Redis Cluster on free local ports."""
    from .redis_support import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.stop()
