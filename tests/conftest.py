"""Shared fixtures: one real anvil per test session, fresh contracts per test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from discofl_p2p.chain.anvil import Anvil


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as a:
        yield a


def run(coro):
    """Runs one coroutine on a fresh event loop (each test owns its loop)."""
    return asyncio.run(coro)
