"""GPU worker: serves the segment-generation activity on the GPU task queue.

Engines load once at start and stay resident. One generation per device at a time by default
(LONGSONG_GPU_CONCURRENCY), as a synchronous activity on its own thread pool so heartbeats and
cancellation keep flowing while it computes. SIGTERM/SIGINT: graceful shutdown; the running
segment gets LONGSONG_SHUTDOWN_GRACE_S seconds to finish, else it is handed back for retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.worker import Worker

from activities.errors import worker_identity
from activities.segment import SegmentActivities
from client import connect
from longsong import config
from longsong.engines.base import EngineError
from longsong.engines.registry import EngineRegistry
from longsong.process import run_worker
from longsong.storage import StorageError, open_storage
from longsong.storage_s3 import StorageUnavailable

log = logging.getLogger("longsong.worker_gpu")


async def serve() -> None:
    registry = EngineRegistry.from_env()
    storage = open_storage()
    client = await connect()
    concurrency = int(os.environ.get("LONGSONG_GPU_CONCURRENCY", "1"))
    grace = float(os.environ.get("LONGSONG_SHUTDOWN_GRACE_S", "60"))
    acts = SegmentActivities(registry, storage)
    worker = Worker(
        client,
        task_queue=config.gpu_queue(),
        activities=[acts.generate_segment],
        activity_executor=ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate"),
        max_concurrent_activities=concurrency,
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=grace),
        identity=worker_identity() + "-gpu",
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    log.info("GPU worker %s on queue %r serving %s, storage %s, concurrency %d",
             worker_identity(), config.gpu_queue(), ", ".join(registry.served()), storage.url, concurrency)
    async with worker:
        await stop.wait()
        log.info("shutting down (grace %.0f s)", grace)


def main() -> None:
    run_worker("worker_gpu", serve, (EngineError, StorageError, StorageUnavailable, ConnectionError, ValueError))


if __name__ == "__main__":
    main()
