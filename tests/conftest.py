from __future__ import annotations

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
