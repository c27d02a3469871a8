"""The one worker factory: the GPU and CPU workers as `worker_gpu.py`/`worker_cpu.py`, the console
scripts, `longsong dev up`, the tests and the benchmarks start them.

GPU worker: serves `generate_segment` on the GPU task queue; engines load once and stay resident;
one generation per device at a time by default, as a synchronous activity on its own thread pool
so heartbeats and cancellation keep flowing while it computes; a MusicGen engine with
LONGSONG_GPU_BATCH > 1 takes that many windows at once and decodes them together.
CPU worker: runs the (light, deterministic) song workflow and the finishing activities; it needs no
GPU extras (nothing here imports torch at module level).
SIGTERM/SIGINT: graceful shutdown; a running activity gets LONGSONG_SHUTDOWN_GRACE_S seconds to
finish, else it is handed back for retry. `python -m longsong.worker gpu|cpu` runs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import AsyncIterator, Literal, NoReturn

from temporalio.client import Client
from temporalio.worker import Worker

from longsong.activities.errors import install_storage_heartbeat, worker_identity
from longsong.process import exit_process
from longsong.settings import Settings, SettingsError
from longsong.storage import Storage, StorageError, StorageUnavailable, open_storage

Kind = Literal["gpu", "cpu"]
HEARTBEAT_THROTTLE = timedelta(seconds=2)  # at most one heartbeat RPC per activity every 2 s
log = logging.getLogger("longsong.worker")


def build_worker(kind: Kind, client: Client, settings: Settings, storage: Storage, registry=None,
                 signer=None) -> Worker:
    """A configured, not yet running worker of `kind`; the GPU worker serves `registry`'s engines, the CPU
    worker signs content credentials with `signer` (longsong.credentials.load_signer; None: unsigned)."""
    grace = timedelta(seconds=settings.shutdown_grace_s)
    # LONGSONG_BUILD_ID set: both workers join the Worker Deployment as version (deployment, build id);
    # pinned songs then run every task, GPU and CPU queue alike, on the build they started on.
    # Unset: unversioned workers (dev stack, tests). The pinning is the deployment's default behavior, not the
    # workflow's decorator: the server refuses a versioning behavior from an unversioned worker.
    from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
    from temporalio.worker import WorkerDeploymentConfig

    deployment = WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=settings.deployment, build_id=settings.build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    ) if settings.build_id else None
    if kind == "gpu":
        from longsong.activities.segment import SegmentActivities

        acts = SegmentActivities(registry, storage)
        slots = registry.slots(settings.gpu_concurrency)
        return Worker(
            client,
            task_queue=settings.gpu_queue,
            activities=[acts.generate_segment],
            activity_executor=ThreadPoolExecutor(slots, thread_name_prefix="generate"),
            max_concurrent_activities=slots,
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            graceful_shutdown_timeout=grace,
            identity=worker_identity() + "-gpu",
            deployment_config=deployment,
        )
    from longsong.activities.finish import FinishActivities
    from longsong.activities.notify import NotifyActivities
    from longsong.activities.quality import QualityActivities
    from longsong.workflows import SongWorkflow
    from longsong.workflows.notify import WebhookWorkflow

    acts = FinishActivities(storage, settings, signer)
    gate = QualityActivities(storage, settings)
    return Worker(
        client,
        task_queue=settings.cpu_queue,
        workflows=[SongWorkflow, WebhookWorkflow],
        activities=[acts.finish_song, acts.cleanup_scratch, acts.unpublish_track, gate.analyze_window,
                    gate.load_parent, NotifyActivities(settings).send_webhook],
        activity_executor=ThreadPoolExecutor(settings.cpu_concurrency, thread_name_prefix="post"),
        max_concurrent_activities=settings.cpu_concurrency,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        graceful_shutdown_timeout=grace,
        identity=worker_identity() + "-cpu",
        deployment_config=deployment,
    )


@contextlib.asynccontextmanager
async def in_process(address: str, settings: Settings, storage: Storage, registry=None, *, runtime=None,
                     interceptors=(), signer=None) -> AsyncIterator[Client]:
    """Both workers in this process, as the worker processes configure them (the procedural engine
    unless `registry` says otherwise); yields their client, on `runtime` (metrics) with `interceptors`
    (tracing) when given, signing with `signer` when given. For tests, benchmarks, the history recorder."""
    if registry is None:
        from longsong.engines.procedural import ProceduralEngine
        from longsong.engines.registry import EngineRegistry

        registry = EngineRegistry([ProceduralEngine()])
    install_storage_heartbeat()  # storage calls in activities heartbeat while they wait out an outage
    client = await Client.connect(address, runtime=runtime, interceptors=list(interceptors))
    async with build_worker("gpu", client, settings, storage, registry), \
            build_worker("cpu", client, settings, storage, signer=signer):
        yield client


async def serve(kind: Kind, settings: Settings) -> None:
    """Prepare what the worker needs (engines or ffmpeg, the store), connect, run until SIGTERM/SIGINT."""
    from longsong import telemetry
    from longsong.client import connect

    runtime = telemetry.runtime(settings)  # a bad or taken LONGSONG_METRICS_ADDR fails before models load
    registry = signer = None
    if kind == "gpu":
        from longsong.engines.registry import EngineRegistry

        registry = EngineRegistry.from_settings(settings)
        serves = "serving " + ", ".join(registry.served())
    else:
        from longsong.audio.encode import ffmpeg_exe

        serves = "ffmpeg " + ffmpeg_exe()
    from longsong.atomic import set_temp_root, sweep

    install_storage_heartbeat()  # storage calls in activities heartbeat while they wait out an outage
    try:
        tmp = set_temp_root(settings.home / "tmp")  # every temporary file under the data dir
    except OSError as e:
        raise SettingsError(f"LONGSONG_HOME: data dir {settings.home} is not writable ({e.strerror})") from None
    if kind == "cpu":  # a bad LONGSONG_C2PA_CERT/KEY: one line (CredentialsError) before connecting
        from longsong.credentials import load_signer

        signer = load_signer(settings)  # unset: the dev CA in $LONGSONG_HOME/c2pa/, made at the first start
        serves += f", content credentials signed by {signer.subject!r}" + ("" if settings.c2pa_cert else " (dev CA)")
    storage = open_storage(settings=settings)
    # What killed workers left behind (their process is gone, or it is over a day old); live workers' files stay.
    swept = [p.name for p in sweep(tmp)] + storage.sweep_temporary()
    if swept:
        log.info("removed %d stale temporary entries (%s)", len(swept), ", ".join(sorted(swept)[:5]))
    client = await connect(settings=settings, runtime=runtime, interceptors=telemetry.interceptors(f"worker-{kind}"))
    worker = build_worker(kind, client, settings, storage, registry, signer)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    queue = settings.gpu_queue if kind == "gpu" else settings.cpu_queue
    metrics = f", metrics on http://{settings.metrics_addr}/metrics" if settings.metrics_addr else ""
    log.info("%s worker %s on queue %r %s, storage %s%s", kind.upper(), worker_identity(), queue, serves,
             storage.url, metrics)
    try:
        async with worker:
            warm = None
            if kind == "cpu":  # librosa's numba code compiles on first use: pay it now, beside the polling worker
                from longsong.analysis.gate import warm_up

                warm = asyncio.ensure_future(asyncio.to_thread(warm_up))
            await stop.wait()
            if warm is not None and not warm.done():
                log.info("stopping during the analysis warm-up")
            log.info("shutting down (grace %.0f s)", settings.shutdown_grace_s)
    finally:
        telemetry.shutdown()


def run(kind: Kind) -> NoReturn:
    """Run one worker process; a known start-up failure is one line on stderr and exit code 2."""
    from longsong.audio.encode import FfmpegMissing
    from longsong.engines.base import EngineError
    from longsong.telemetry import setup_logging

    try:
        settings = Settings.from_env()
        setup_logging(settings, f"worker-{kind}")
        asyncio.run(serve(kind, settings))
    except (SettingsError, EngineError, FfmpegMissing, StorageError, StorageUnavailable, ConnectionError,
            ValueError) as e:
        print(f"worker_{kind}: {e}", file=sys.stderr)
        exit_process(2)
    exit_process(0)


def main_gpu() -> NoReturn:
    run("gpu")


def main_cpu() -> NoReturn:
    run("cpu")


if __name__ == "__main__":
    if sys.argv[1:] not in (["gpu"], ["cpu"]):
        sys.exit("usage: python -m longsong.worker gpu|cpu")
    run(sys.argv[1])  # type: ignore[arg-type]
