"""Shared fixtures: tiny models built from a config (session-scoped: built once), fresh caches."""
from __future__ import annotations

import pytest

from scoring.store.cache import Cache
from tests.tiny import build_model


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real default model or large data (CI runs these too)")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")


@pytest.fixture(scope="session", autouse=True)
def machine_dir(tmp_path_factory):
    """This machine's facts (the CPU's bf16 measurement, scoring.env.machine_dir) kept in a folder of the test
    session's, here and in every subprocess, not in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight tiny Llama with a ChatML chat template."""
    return build_model(tmp_path_factory.mktemp("tiny-chat"), chat_template=True)


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory):
    """A random-weight tiny Llama whose tokenizer has no chat template (plain template path)."""
    return build_model(tmp_path_factory.mktemp("tiny-plain"), chat_template=False)


@pytest.fixture
def cpu_one_thread(monkeypatch):
    """CPU only, one BLAS thread, here and in every subprocess (they inherit os.environ); no ambient cache.
    A shared small machine makes oversubscribed threads crawl."""
    import torch

    monkeypatch.setenv("DAVIR_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("DAVIR_CACHE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def planted_evaluations(tmp_path_factory):
    """A cache with the planted dataset, a saved selection and two finished evaluations of it (a plain one and a
    sweep): tests.helpers.build_planted_evaluations, built once per session on the CPU with one thread."""
    import torch

    from tests.helpers import build_planted_evaluations

    root = tmp_path_factory.mktemp("planted-evaluations")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("DAVIR_DEVICE", "cpu"), ("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                            ("TOKENIZERS_PARALLELISM", "false")):  # fmt: skip
            mp.setenv(name, value)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return build_planted_evaluations(root, build_model(root / "model"))
        finally:
            torch.set_num_threads(threads)
