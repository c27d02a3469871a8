"""GPU activity: generate one continuation window and store its audio and hand-off state by key."""

from __future__ import annotations

import time

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from longsong.activities.errors import classified, worker_identity
from longsong.audio.npy import from_npy_bytes, to_npy_bytes
from longsong.engines.base import EngineError, TransientEngineError, WindowRequest
from longsong.engines.registry import EngineRegistry
from longsong.frames import FRAME_RATE
from longsong.storage import Storage
from longsong.workflows.messages import SegmentJob, SegmentOutcome, SegmentRecord, attempt_key
from longsong.workflows.metrics import WINDOW_RTF, WINDOW_SECONDS


def record_window(engine: str, model: str, index: int, generate_s: float, new_s: float) -> None:
    """The window's generation time and real-time factor (wall time per second of new audio; under 1 is
    faster than real time) on the worker's metrics endpoint, and one log line carrying the window index."""
    labels = {"engine": engine, "model": model}
    meter = activity.metric_meter()
    meter.create_histogram_float(WINDOW_SECONDS, "generation wall time of one window", "s").record(generate_s, labels)
    rtf = generate_s / new_s if new_s > 0 else 0.0
    meter.create_histogram_float(WINDOW_RTF, "window generation time / seconds of new audio").record(rtf, labels)
    activity.logger.info("window %d generated in %.2f s (%.1f s new, RTF %.3f)", index, generate_s, new_s, rtf,
                         extra={"window": index})


class SegmentActivities:
    """Holds the engines (loaded once per worker process) and the object store."""

    def __init__(self, registry: EngineRegistry, storage: Storage):
        self.registry = registry
        self.storage = storage

    @activity.defn(name="generate_segment")
    def generate_segment(self, job: SegmentJob) -> SegmentOutcome:
        """Synchronous (runs on the worker's one-thread executor); heartbeats on engine progress."""
        info = activity.info()
        seg = job.segment
        with classified():
            engine = self.registry.get(job.engine, job.model)
            if job.model_version is not None and engine.version != job.model_version:
                raise EngineError(
                    f"model: window {seg.index + 1} of this song must use {engine.model} revision "
                    f"{job.model_version} like its first window, but this GPU worker serves revision {engine.version}")
            handoff = self.storage.get_bytes(job.handoff_key) if job.handoff_key else None
            context_audio = None
            if job.context_audio_key and seg.context_frames and engine.reuses_context_audio:
                previous = from_npy_bytes(self.storage.get_bytes(job.context_audio_key))
                context_audio = previous[:, previous.shape[1] - seg.context_frames * engine.sample_rate // FRAME_RATE:]

            def on_step(done: int, total: int) -> None:
                activity.heartbeat(done, total)
                if activity.is_cancelled():
                    raise CancelledError("segment cancelled")

            t0 = time.perf_counter()
            try:
                result = engine.generate(
                    WindowRequest(seg.text, seg.seed, seg.n_frames, seg.context_frames, job.sampling, handoff,
                                  index=seg.index, reroll=job.reroll, context_audio=context_audio),
                    on_step,
                )
            except TransientEngineError as e:
                raise ApplicationError(str(e), type="TransientEngineError") from e
            generate_s = time.perf_counter() - t0
            record_window(engine.name, engine.model, seg.index, generate_s, seg.new_frames / FRAME_RATE)
            keys = [job.audio_key, job.state_key, job.record_key]
            if job.write_once:
                keys = [attempt_key(key, info.attempt) for key in keys]
            audio_key, state_key, record_key = keys
            self.storage.put_bytes(audio_key, to_npy_bytes(result.audio))
            self.storage.put_bytes(state_key, result.handoff)
            outcome = SegmentOutcome(
                index=seg.index,
                audio_key=audio_key,
                state_key=state_key,
                sample_rate=engine.sample_rate,
                channels=int(result.audio.shape[0]),
                n_samples=int(result.audio.shape[1]),
                engine=engine.name,
                model=engine.model,
                model_version=engine.version,
                generate_s=generate_s,
                worker=worker_identity(),
                attempt=info.attempt,
                details=result.details,
                record_key=record_key,
                reroll=job.reroll,
            )
            self.storage.put_bytes(record_key, SegmentRecord(seg, outcome).to_json(), "application/json")
        return outcome
