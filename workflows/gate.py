"""The quality gate's decisions, as pure functions the workflow calls (deterministic, import-light).

A window's attempts are judged in order; the first that passes is kept. When `max_rerolls` re-rolls all
fail, the best-scoring attempt is kept (the earliest among equals) and the song is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from longsong.workflows.messages import (
    AnalyzeJob,
    Lineage,
    ParentWindows,
    SegmentJob,
    SegmentOutcome,
    WindowQuality,
    WindowVerdict,
    segment_key,
)

from longsong.frames import FRAME_RATE
from longsong.plan import Plan, Segment
from longsong.request import Sampling, SongRequest


@dataclass
class KeptWindow:
    """A window the song uses: generated here (`outcome`) or inherited from the parent song."""

    index: int
    record_key: str
    state_key: str
    features_key: str  # "" when the window was not judged (gate off, or a parent made without it)
    report_key: str
    quality: WindowQuality
    rejected: list[str] = field(default_factory=list)  # report keys of the attempts not kept
    outcome: SegmentOutcome | None = None  # None: inherited


def decided(attempts: list[tuple[SegmentOutcome, WindowVerdict]], max_rerolls: int) -> bool:
    """True when the window is settled: its last attempt passed, or no re-roll is left."""
    return attempts[-1][1].passed or len(attempts) > max_rerolls


def keep(attempts: list[tuple[SegmentOutcome, WindowVerdict]]) -> KeptWindow:
    """The attempt the song keeps, with the window's gate outcome."""
    out, verdict = attempts[-1]
    if not verdict.passed:
        out, verdict = max(attempts, key=lambda a: (a[1].score, -a[1].reroll))
    quality = WindowQuality(out.index, len(attempts) - 1, verdict.reroll, verdict.passed, verdict.score,
                            verdict.failed)
    rejected = [v.report_key for _, v in attempts if v is not verdict]
    return KeptWindow(out.index, out.record_key, out.state_key, verdict.features_key, verdict.report_key,
                      quality, rejected, out)


def unjudged(out: SegmentOutcome) -> KeptWindow:
    """A window kept without a gate (max_rerolls 0)."""
    return KeptWindow(out.index, out.record_key, out.state_key, "", "",
                      WindowQuality(out.index, 0, 0, True, 1.0, []), [], out)


def reroll_summary(index: int, total: int, verdict: WindowVerdict) -> str:
    """The Web UI's line for a re-rolled window: which attempt and why."""
    return f"window {index + 1}/{total}: re-roll {verdict.reroll + 1} ({verdict.note or ', '.join(verdict.failed)})"


def window_job(req: SongRequest, plan: Plan, seg: Segment, reroll: int, prev: SegmentOutcome | KeptWindow | None,
               model: str | None, revision: str | None, decode_less: bool = False) -> SegmentJob:
    """Generate window `seg` continuing `prev` (its hand-off state; with `decode_less` also its audio, whose
    context part the engine reuses instead of decoding it again: not for an inherited window, whose audio this
    workflow never saw); re-roll `reroll` derives its seed (seed + reroll) and has its own scratch keys, so a
    rejected attempt is never overwritten nor continued from."""
    seg = replace(seg, seed=seg.seed + reroll)
    out = prev.outcome if isinstance(prev, KeptWindow) else prev
    handoff = prev.state_key if prev is not None else None
    context_audio = out.audio_key if decode_less and out is not None else None
    return SegmentJob(
        request_id=req.request_id, engine=req.engine, model=model, segment=seg, total_segments=len(plan.segments),
        sampling=Sampling.of(req), handoff_key=handoff,
        audio_key=segment_key(req.request_id, seg.index, "npy", reroll),
        state_key=segment_key(req.request_id, seg.index, "state", reroll),
        record_key=segment_key(req.request_id, seg.index, "json", reroll),
        write_once=True, model_version=revision, reroll=reroll, context_audio_key=context_audio)


def analyze_job(req: SongRequest, seg: Segment, out: SegmentOutcome, history: list[str], reroll: int) -> AnalyzeJob:
    """Judge the new part of `out` (window `seg`, re-roll `reroll`) against the kept windows' `history`."""
    return AnalyzeJob(req.request_id, seg.index, reroll, out.audio_key, seg.context_frames,
                      (seg.start_frame + seg.context_frames) / FRAME_RATE, out.sample_rate, req.bpm, req.key,
                      history, segment_key(req.request_id, seg.index, "features", reroll),
                      segment_key(req.request_id, seg.index, "quality.json", reroll))


def lineage(req: SongRequest, parent: ParentWindows | None) -> Lineage | None:
    """The manifest's `parent` entry of a derived song: which song, how many windows, up to when."""
    if parent is None:
        return None
    last = parent.segments[-1]
    return Lineage(req.parent_id or "", len(parent.segments), (last.start_frame + last.n_frames) / FRAME_RATE)
