"""Shared fixtures: tiny random models built in code with fixed seeds."""
from __future__ import annotations

import pytest
import torch

from tests.redis_fixture import redis_server, redis_url  # noqa: F401  (a real redis-server; see tests/redis_fixture.py)


@pytest.fixture(scope="session")
def micro_backbone():
    from restuning.backbones import create_backbone

    return create_backbone("restune_vit_micro", weights="random:0")


@pytest.fixture(scope="session")
def micro_backbone64():
    from restuning.backbones import create_backbone

    return create_backbone("restune_vit_micro", weights="random:0", dtype=torch.float64)


@pytest.fixture(scope="session")
def micro_avg_backbone64():
    from restuning.backbones import create_backbone

    return create_backbone("restune_vit_micro_avg", weights="random:0", dtype=torch.float64)
