"""CPU activities: assemble + master + watermark, then encode + store, then scratch cleanup.

Each reads its inputs from the object store by key and writes outputs by deterministic key,
so a retry overwrites instead of duplicating.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from temporalio import activity

from activities.errors import classified, worker_identity
from longsong import config
from longsong.assemble import assemble
from longsong.audio_io import from_npy_bytes, to_npy_bytes
from longsong.encode import CONTENT_TYPES, EXTENSIONS, decode, encode
from longsong.manifest import build_manifest, track_tags
from longsong.mastering import master, true_peak_dbtp
from longsong.payloads import (
    MasterJob,
    MasterOutcome,
    PublishJob,
    PublishOutcome,
    StoredFile,
    scratch_prefix,
    track_prefix,
)
from longsong.storage import COMMIT_MARKER, Storage
from longsong.watermark import embed
from longsong.waveform import render_waveform

LOSSY = ("mp3", "opus")


class PostActivities:
    def __init__(self, storage: Storage):
        self.storage = storage

    @activity.defn(name="assemble_and_master")
    def assemble_and_master(self, job: MasterJob) -> MasterOutcome:
        """Crossfade the windows, master the whole track (never per segment), then watermark."""
        timings: dict[str, float] = {}
        with classified():
            t = time.perf_counter()
            windows = [from_npy_bytes(self.storage.get_bytes(s.audio_key)) for s in job.segments]
            sr = job.segments[0].sample_rate
            track, seams = assemble(windows, job.plan, sr)
            timings["assemble_s"] = time.perf_counter() - t
            activity.heartbeat("assembled")
            t = time.perf_counter()
            mastered, report = master(track, sr, job.request.loudness_lufs, job.request.true_peak_dbtp)
            timings["master_s"] = time.perf_counter() - t
            activity.heartbeat("mastered")
            t = time.perf_counter()
            marked = embed(mastered, sr, job.watermark_id, config.watermark_key())
            timings["watermark_s"] = time.perf_counter() - t
            t = time.perf_counter()
            self.storage.put_bytes(job.out_key, to_npy_bytes(marked))
            timings["store_s"] = time.perf_counter() - t
        return MasterOutcome(
            key=job.out_key,
            sample_rate=sr,
            channels=int(marked.shape[0]),
            n_samples=int(marked.shape[1]),
            loudness_before_lufs=report.loudness_before_lufs,
            loudness_lufs=report.loudness_lufs,
            true_peak_dbtp=report.true_peak_dbtp,
            limiter_gain_reduction_db=report.limiter_reduction_db,
            seams=seams,
            timings=timings,
            worker=worker_identity(),
        )

    @activity.defn(name="publish")
    def publish(self, job: PublishJob) -> PublishOutcome:
        """Encode every format, draw the waveform, upload, and write metadata.json last (commit marker)."""
        timings: dict[str, float] = {}
        req, m = job.request, job.master
        prefix = track_prefix(req.user_id, req.request_id)
        engine, model = job.segments[0].engine, job.segments[0].model
        object_meta = {"request-id": req.request_id, "engine": engine, "model": model}
        files: dict[str, StoredFile] = {}
        true_peaks: dict[str, float] = {}
        with classified(), tempfile.TemporaryDirectory(prefix="longsong-publish-") as tmp:
            audio = from_npy_bytes(self.storage.get_bytes(m.key))
            tags = track_tags(req, engine, model)
            local: dict[str, tuple[Path, str]] = {}
            for fmt in req.formats:
                t = time.perf_counter()
                path = Path(tmp) / f"track.{EXTENSIONS[fmt]}"
                encode(audio, m.sample_rate, fmt, path, tags)
                if fmt in LOSSY:
                    decoded, dsr = decode(path)
                    true_peaks[fmt] = true_peak_dbtp(decoded, dsr)
                local[fmt] = (path, CONTENT_TYPES[fmt])
                timings[f"encode_{fmt}_s"] = time.perf_counter() - t
                activity.heartbeat(fmt)
            t = time.perf_counter()
            png = Path(tmp) / "waveform.png"
            render_waveform(audio, m.sample_rate, png, [s.start_s for s in m.seams], req.prompt[:80])
            local["waveform"] = (png, "image/png")
            timings["waveform_s"] = time.perf_counter() - t
            t = time.perf_counter()
            for name, (path, ctype) in local.items():
                info = self.storage.put_file(prefix + path.name, path, ctype, object_meta)
                files[name] = StoredFile(info.key, info.size, info.sha256, ctype)
            timings["store_s"] = time.perf_counter() - t
            manifest = build_manifest(job, files, true_peaks, timings, worker_identity())
            meta_key = prefix + COMMIT_MARKER
            info = self.storage.put_bytes(meta_key, manifest, "application/json", object_meta)
            files["metadata"] = StoredFile(info.key, info.size, info.sha256, "application/json")
            urls = {name: self.storage.link(f.key) for name, f in files.items()}
        return PublishOutcome(prefix, files, true_peaks, timings, worker_identity(), urls)

    @activity.defn(name="cleanup_scratch")
    def cleanup_scratch(self, request_id: str) -> int:
        """Delete work/{request_id}/ unless LONGSONG_KEEP_SCRATCH is set (for debugging)."""
        if config.keep_scratch():
            return 0
        with classified():
            return self.storage.delete_prefix(scratch_prefix(request_id))
