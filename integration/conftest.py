"""One cluster per test module: started once, stopped and cleaned up at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from integration.cluster import Cluster

FULL = os.environ.get("KEYSPAN_INTEGRATION_FULL") == "1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running
