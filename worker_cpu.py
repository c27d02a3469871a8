"""CPU worker: runs the (light, deterministic) song workflow and the mastering/publishing activities.

Needs no GPU extras: nothing here imports torch. Keep it long-lived (librosa and numba warm up once).
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
from activities.post import PostActivities
from client import connect
from longsong import config
from longsong.encode import FfmpegMissing, ffmpeg_exe
from longsong.process import run_worker
from longsong.storage import StorageError, open_storage
from longsong.storage_s3 import StorageUnavailable
from workflows import SongWorkflow

log = logging.getLogger("longsong.worker_cpu")


async def serve() -> None:
    ffmpeg = ffmpeg_exe()
    storage = open_storage()
    client = await connect()
    concurrency = int(os.environ.get("LONGSONG_CPU_CONCURRENCY", "2"))
    acts = PostActivities(storage)
    worker = Worker(
        client,
        task_queue=config.cpu_queue(),
        workflows=[SongWorkflow],
        activities=[acts.finish_song, acts.cleanup_scratch],
        activity_executor=ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="post"),
        max_concurrent_activities=concurrency,
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=float(os.environ.get("LONGSONG_SHUTDOWN_GRACE_S", "60"))),
        identity=worker_identity() + "-cpu",
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    log.info("CPU worker %s on queue %r, storage %s, ffmpeg %s", worker_identity(), config.cpu_queue(),
             storage.url, ffmpeg)
    async with worker:
        await stop.wait()
        log.info("shutting down")


def main() -> None:
    run_worker("worker_cpu", serve, (FfmpegMissing, StorageError, StorageUnavailable, ConnectionError, ValueError))


if __name__ == "__main__":
    main()
