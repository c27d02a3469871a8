"""The track's provenance manifest (metadata.json) and the tags written into each audio file."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone

from longsong import __version__
from longsong.frames import FRAME_RATE
from longsong.plan import Plan
from longsong.request import SongRequest
from longsong.workflows.messages import FinishJob, Mastered, SegmentOutcome, StoredFile


def track_tags(req: SongRequest, engine: str, model: str) -> dict[str, str]:
    return {
        "title": req.prompt[:80],
        "comment": f"AI-generated with longsong {__version__} ({engine} engine, model {model})",
        "prompt": req.prompt,
        "engine": engine,
        "model": model,
        "request_id": req.request_id,
    }


def build_manifest(job: FinishJob, plan: Plan, outcomes: list[SegmentOutcome], m: Mastered,
                   files: dict[str, StoredFile], finish_timings: dict[str, float], worker: str,
                   windows: list[dict], credentials: dict | None = None) -> bytes:
    """Everything needed to tell how this track was made: request, seeds, plan, engine, DSP figures, each
    window's gate verdicts and kept files (`windows`), the song it was derived from (`parent`), and which
    files carry signed content credentials (`credentials`, from longsong.credentials.summary)."""
    first = outcomes[0]
    manifest = {
        "generator": f"longsong {__version__}",
        "ai_generated": True,
        "request": asdict(job.request),
        "seed": job.seed,
        "engine": {"name": first.engine, "model": first.model, "version": first.model_version,
                   "details": first.details},
        "duration_s": m.n_samples / m.sample_rate,
        "sample_rate": m.sample_rate,
        "channels": m.channels,
        "plan": {
            "style": plan.style,
            "crossfade_s": plan.crossfade_frames / FRAME_RATE,
            "segments": [
                {
                    "index": s.index,
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "context_s": s.context_frames / FRAME_RATE,
                    "new_s": s.new_frames / FRAME_RATE,
                    "text": s.text,
                    "seed": s.seed,
                    "generate_s": round(o.generate_s, 3),
                    "attempt": o.attempt,
                    "worker": o.worker,
                    "model": o.model,
                    "model_version": o.model_version,
                    **({"batch": int(o.details["batch"])} if "batch" in o.details else {}),
                }
                for s, o in zip(plan.segments, outcomes)
            ],
        },
        "windows": windows,
        "quality": {
            "gate": "on" if job.max_rerolls else "off",
            "max_rerolls": job.max_rerolls,
            "status": ("off" if not job.max_rerolls else
                       "flagged" if any(not q.passed for q in job.quality) else "passed"),
            "flagged_windows": [q.index for q in job.quality if not q.passed],
            "rerolls": sum(q.rerolls for q in job.quality if not q.inherited),
        },
        "parent": asdict(job.parent) if job.parent else None,
        "seams": [asdict(s) for s in m.seams],
        "loudness": {
            "before_lufs": m.loudness_before_lufs,
            "integrated_lufs": m.loudness_lufs,
            "target_lufs": job.request.loudness_lufs,
            "true_peak_dbtp": m.true_peak_dbtp,
            "ceiling_dbtp": job.request.true_peak_dbtp,
            "limiter_gain_reduction_db": m.limiter_gain_reduction_db,
            "encoded_true_peak_dbtp": m.encoded_true_peak_dbtp,
            "encoded_loudness_lufs": m.encoded_loudness_lufs,
            "encoded_margin_db": m.encoded_margin_db,
            "mono_rule": "dual mono: a 1-channel file is measured as if fed to both speakers (+3.01 dB)",
        },
        "watermark": {"id": job.watermark_id, "id_hex": f"{job.watermark_id:08x}"},
        "credentials": credentials,
        "files": {name: asdict(f) for name, f in files.items()},
        "timings": {
            "stages_s": job.stage_timings,
            "finish_s": finish_timings,
        },
        "workers": {
            "gpu": sorted({o.worker for o in outcomes}),
            "cpu": worker,
        },
        "started_at": job.started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode()
