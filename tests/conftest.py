from __future__ import annotations

import threading

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def loop_thread() -> int:
    """The ident of the thread the test (and its event loop) runs on."""
    return threading.get_ident()
