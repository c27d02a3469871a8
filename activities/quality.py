"""CPU activities of the quality gate: judge a window, and load the windows a derived song reuses."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from temporalio import activity

from longsong.activities.errors import classified
from longsong.frames import FRAME_RATE
from longsong.settings import Settings
from longsong.storage import Storage
from longsong.workflows.messages import AnalyzeJob, ParentJob, ParentWindows, WindowVerdict


class QualityActivities:
    def __init__(self, storage: Storage, settings: Settings):
        self.storage = storage
        self.settings = settings

    @activity.defn(name="analyze_window")
    def analyze_window(self, job: AnalyzeJob) -> WindowVerdict:
        """Measure the window's new part against the kept windows' features; store this window's features
        (for the windows after it) and its full report (for metadata.json); return the verdict."""
        from longsong.analysis.features import Features
        from longsong.analysis.gate import analyze
        from longsong.analysis.report import Expectation
        from longsong.audio.npy import from_npy_bytes

        with classified():
            t0 = time.perf_counter()
            audio = from_npy_bytes(self.storage.get_bytes(job.audio_key))
            new = audio[:, job.context_frames * (job.sample_rate // FRAME_RATE):]
            history = [Features.from_bytes(self.storage.get_bytes(key)) for key in job.history]
            report, features = analyze(new, job.sample_rate, job.new_start_s, history, Expectation(job.bpm, job.key),
                                       self.settings.thresholds)
            analyze_s = time.perf_counter() - t0
            note = "; ".join(m.note for m in report.measures if m.name in report.failed)
            verdict = WindowVerdict(job.index, job.reroll, report.passed, float(report.score), report.failed, note,
                                    job.features_key, job.report_key, analyze_s, report.measures)
            self.storage.put_bytes(job.features_key, features.to_bytes())
            body = {"index": job.index, "reroll": job.reroll, "passed": report.passed, "score": verdict.score,
                    "failed": report.failed, "note": note, "measures": [asdict(m) for m in report.measures],
                    "facts": report.facts, "analyze_s": analyze_s}
            self.storage.put_bytes(job.report_key, json.dumps(body).encode(), "application/json")
        return verdict

    @activity.defn(name="load_parent")
    def load_parent(self, job: ParentJob) -> ParentWindows:
        """The parent's kept windows, checked again now (it may have been deleted since the request)."""
        from longsong.lineage import load_parent

        with classified():
            return load_parent(self.storage, job.user_id, job.parent_id, job.keep)
