"""Shared fixtures: tiny models built from a config (session-scoped: built once), fresh caches."""
from __future__ import annotations

import pytest

from scoring.store import Cache
from tests.tiny import build_model


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real default model or large data (CI runs these too)")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight tiny Llama with a ChatML chat template."""
    return build_model(tmp_path_factory.mktemp("tiny-chat"), chat_template=True)


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory):
    """A random-weight tiny Llama whose tokenizer has no chat template (plain template path)."""
    return build_model(tmp_path_factory.mktemp("tiny-plain"), chat_template=False)


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache")
