import pytest

pytest_plugins = ["tests.fixtures"]


@pytest.fixture
def anyio_backend():
    """Async tests run on asyncio, the loop watcher itself runs on."""
    return "asyncio"
