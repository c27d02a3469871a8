"""CPU activities: finish a song (assemble, master, watermark, encode, store), and scratch cleanup.

Each reads its inputs from the object store by key and writes outputs by deterministic key,
so a retry overwrites instead of duplicating.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from temporalio import activity
from temporalio.exceptions import CancelledError

from longsong.activities.errors import classified, worker_identity
from longsong.atomic import temp_dir
from longsong.audio.assemble import assemble
from longsong.audio.delivery import LOSSLESS, deliver
from longsong.audio.encode import CONTENT_TYPES, EXTENSIONS
from longsong.audio.mastering import master_track
from longsong.audio.npy import from_npy_bytes
from longsong.audio.watermark import embed
from longsong.audio.waveform import render_waveform
from longsong.credentials import Claim, CredentialSigner, request_sha256, sign, summary
from longsong.manifest import build_manifest, track_tags
from longsong.settings import Settings
from longsong.storage import COMMIT_MARKER, Storage
from longsong.workflows.messages import (
    FinishJob,
    FinishOutcome,
    Mastered,
    SegmentRecord,
    StoredFile,
    scratch_prefix,
    track_prefix,
    window_key,
)


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


class FinishActivities:
    def __init__(self, storage: Storage, settings: Settings, signer: CredentialSigner | None = None):
        self.storage = storage
        self.settings = settings
        self.signer = signer  # content credentials for the MP3/WAV/FLAC files (None: unsigned)

    @activity.defn(name="finish_song")
    def finish_song(self, job: FinishJob) -> FinishOutcome:
        """Crossfade the windows, master the whole track (never per segment), watermark, then encode
        every format and draw the waveform in parallel, upload, and write metadata.json last (the
        commit marker). One activity, so the mastered audio never makes a scratch round trip."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        req = job.request
        prefix = track_prefix(req.user_id, req.request_id)
        # under the data dir, named for the sweeper: a killed worker's leftovers go at the next worker start
        with classified(), temp_dir("finish", self.settings.home / "tmp") as tmp:
            t = time.perf_counter()
            records = [SegmentRecord.from_json(self.storage.get_bytes(key)) for key in job.records]
            plan = replace(job.plan, segments=[r.segment for r in records])
            outcomes = [r.outcome for r in records]
            engine, model, sr = outcomes[0].engine, outcomes[0].model, outcomes[0].sample_rate
            object_meta = {"request-id": req.request_id, "engine": engine, "model": model}
            windows, kept = self._keep_windows(job, prefix, records)
            track, seams = assemble(windows, plan, sr)
            del windows
            timings["assemble_s"] = time.perf_counter() - t
            t = time.perf_counter()
            mastered, report = master_track(track, sr, req.loudness_lufs, req.true_peak_dbtp,
                                            max_gain_db=self.settings.max_gain_db)
            timings["master_s"] = time.perf_counter() - t
            activity.heartbeat("mastered")
            t = time.perf_counter()
            audio = embed(mastered, sr, job.watermark_id, self.settings.watermark_secret,
                          progress=lambda: activity.heartbeat("watermarking"))
            timings["watermark_s"] = time.perf_counter() - t
            activity.heartbeat("watermarked")

            tags = track_tags(req, engine, model)
            png = Path(tmp) / "waveform.png"
            local: dict[str, tuple[Path, str]] = {}
            delivered = {}
            # ffmpeg runs as a subprocess and numpy releases the GIL: encode formats and draw in parallel.
            with ThreadPoolExecutor(max_workers=2) as pool:
                encodes = {fmt: pool.submit(deliver, audio, sr, fmt, Path(tmp) / f"track.{EXTENSIONS[fmt]}", tags,
                                            req.true_peak_dbtp, self.settings.max_gain_db)
                           for fmt in sorted(req.formats, key=lambda f: f in LOSSLESS)}  # slowest first
                drawn = pool.submit(_timed, render_waveform, audio, sr, png, [s.start_s for s in seams],
                                    req.prompt[:80])
                for fmt, future in encodes.items():
                    delivered[fmt] = future.result()
                    local[fmt] = (delivered[fmt].path, CONTENT_TYPES[fmt])
                    timings[f"encode_{fmt}_s"] = delivered[fmt].seconds
                    activity.heartbeat(fmt)
                timings["waveform_s"] = drawn.result()
            local["waveform"] = (png, "image/png")
            t = time.perf_counter()  # content credentials go into the encoded files before they are uploaded
            claim = Claim(req.request_id, engine, model, outcomes[0].model_version, request_sha256(req),
                          job.watermark_id, req.prompt[:80], job.parent.request_id if job.parent else None)
            signed = {f: self.signer is not None and sign(local[f][0], f, claim, self.signer) for f in req.formats}
            timings["sign_s"] = time.perf_counter() - t

            t = time.perf_counter()
            files: dict[str, StoredFile] = {}
            for name, (path, ctype) in local.items():
                info = self.storage.put_file(prefix + path.name, path, ctype, object_meta)
                files[name] = StoredFile(info.key, info.size, info.sha256, ctype)
            timings["store_s"] = time.perf_counter() - t
            facts = Mastered(sr, int(audio.shape[0]), int(audio.shape[1]), report.loudness_before_lufs,
                             report.loudness_lufs, report.true_peak_dbtp, report.limiter_reduction_db, seams,
                             {f: d.true_peak_dbtp for f, d in delivered.items()},
                             {f: d.loudness_lufs for f, d in delivered.items()},
                             {f: d.margin_db for f, d in delivered.items()})
            timings["wall_s"] = time.perf_counter() - started
            activity.heartbeat("publishing")
            if activity.is_cancelled():  # the song was cancelled: never make the folder visible
                raise CancelledError("finish cancelled before publishing")
            manifest = build_manifest(job, plan, outcomes, facts, files, timings, worker_identity(), kept,
                                      summary(signed, self.signer, claim))
            info = self.storage.put_bytes(prefix + COMMIT_MARKER, manifest, "application/json", object_meta)
            files["metadata"] = StoredFile(info.key, info.size, info.sha256, "application/json")
        return FinishOutcome(prefix, files, facts, timings, worker_identity())  # keys only, never links

    def _keep_windows(self, job: FinishJob, prefix: str, records: list[SegmentRecord]
                      ) -> tuple[list[np.ndarray], list[dict]]:
        """Each window's audio (for the assembly), copied with its hand-off state, features and gate report
        into the track folder's windows/, so a later song can extend or redo this one without regenerating
        it. Returns the audio and the manifest's window entries."""
        windows, entries = [], []
        inherited = job.parent.kept_windows if job.parent else 0
        for i, record in enumerate(records):
            o = record.outcome
            audio = self.storage.get_bytes(o.audio_key)
            windows.append(from_npy_bytes(audio))
            keys = {kind: window_key(prefix, i, kind) for kind in ("npy", "state", "json")}
            self.storage.put_bytes(keys["npy"], audio)
            del audio
            self.storage.put_bytes(keys["state"], self.storage.get_bytes(o.state_key))
            entry = {"index": i, "start_s": record.segment.start_s, "end_s": record.segment.end_s,
                     "seed": record.segment.seed, "audio": keys["npy"], "state": keys["state"], "record": keys["json"],
                     "features": "", "quality": "", "inherited_from": job.parent.request_id if i < inherited else None}
            if i < len(job.features) and job.features[i]:
                entry["features"] = window_key(prefix, i, "features")
                self.storage.put_bytes(entry["features"], self.storage.get_bytes(job.features[i]))
            if i < len(job.quality):
                report = json.loads(self.storage.get_bytes(job.reports[i])) if job.reports[i] else {}
                if report:
                    entry["quality"] = window_key(prefix, i, "quality.json")
                    self.storage.put_bytes(entry["quality"], json.dumps(report).encode(), "application/json")
                rejected = [json.loads(self.storage.get_bytes(key)) for key in job.rejected[i]]
                entry["gate"] = {"summary": asdict(job.quality[i]), "measures": report.get("measures", []),
                                 "rejected": [{k: r[k] for k in ("reroll", "score", "failed", "note")} for r in rejected]}
            moved = replace(o, audio_key=keys["npy"], state_key=keys["state"], record_key=keys["json"])
            self.storage.put_bytes(keys["json"], SegmentRecord(record.segment, moved).to_json(), "application/json")
            entries.append(entry)
            activity.heartbeat(f"window {i + 1} kept")
        return windows, entries

    @activity.defn(name="unpublish_track")
    def unpublish_track(self, prefix: str) -> int:
        """Remove a cancelled song's track folder: its commit marker first, so readers stop seeing it at once."""
        with classified():
            keys = self.storage.list(prefix)
            marker = prefix + COMMIT_MARKER
            if marker in keys:
                self.storage.delete_prefix(marker)
            return self.storage.delete_prefix(prefix)

    @activity.defn(name="cleanup_scratch")
    def cleanup_scratch(self, request_id: str) -> int:
        """Delete work/{request_id}/ unless LONGSONG_KEEP_SCRATCH is set (for debugging)."""
        if self.settings.keep_scratch:
            return 0
        with classified():
            return self.storage.delete_prefix(scratch_prefix(request_id))
