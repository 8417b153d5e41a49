"""The slow consumer (256 MiB into a backend reading 2 MB/s, bounded RSS) with
every agent on ``--transport tcp``, on a TCP stack of its own (the test adds
its own ``allow-all`` rule and agents, as in ``test_accept_slow_consumer.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import Stack
from .test_accept_slow_consumer import test_slow_backend_256_mib_bounded_rss
from .test_accept_tcp import TcpStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

# slow in this module too (a module-level mark is not carried by the import)
test_slow_backend_256_mib_bounded_rss = pytest.mark.slow(test_slow_backend_256_mib_bounded_rss)

__all__ = ["test_slow_backend_256_mib_bounded_rss"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = TcpStack(tmp_path_factory.mktemp("tcpslow"))
    try:
        yield s.start()
    finally:
        s.close()
