"""Split a song into overlapping continuation windows: a pure, deterministic function.

Everything is counted in frames of the 50 Hz token grid MusicGen uses (640 samples at
32 kHz), so seams fall on the frame grid whatever the engine's sample rate, and the
track is trimmed to exactly round(duration_s * sample_rate) samples at assembly.
Schedule as in audiocraft's long generation: window 30 s, context 12 s, 18 s new per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from longsong.frames import FRAME_RATE
from longsong.request import InvalidRequest, Section, SongRequest

OUTRO_TEXT = "outro, ending, final cadence"


@dataclass(frozen=True)
class Segment:
    index: int
    start_frame: int  # where the window starts on the track timeline
    n_frames: int  # window length: context + new
    context_frames: int  # re-generated tail of the previous window (0 for segment 0)
    text: str  # full conditioning text: global style prefix + section part
    section: str
    seed: int

    @property
    def new_frames(self) -> int:
        return self.n_frames - self.context_frames

    @property
    def start_s(self) -> float:
        return self.start_frame / FRAME_RATE

    @property
    def end_s(self) -> float:
        return (self.start_frame + self.n_frames) / FRAME_RATE


@dataclass(frozen=True)
class Plan:
    segments: list[Segment]
    duration_s: float
    total_frames: int  # frames covered by the windows (>= duration, trimmed at assembly)
    crossfade_frames: int
    style: str  # the global style prefix shared by every segment

    def track_samples(self, sample_rate: int) -> int:
        return round(self.duration_s * sample_rate)

    def seam_frames(self) -> list[tuple[int, int]]:
        """(start, end) of each crossfade on the timeline: centred in the overlap."""
        seams = []
        for seg in self.segments[1:]:
            start = seg.start_frame + (seg.context_frames - self.crossfade_frames) // 2
            seams.append((start, start + self.crossfade_frames))
        return seams


def segment_seed(seed: int, index: int) -> int:
    """Per-segment seed from the request seed (splitmix64 step), in [0, 2**31)."""
    z = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


def style_text(req: SongRequest) -> str:
    """Global style prefix: "{bpm} bpm, {key}, {genre}, {mood}, {prompt}" (AudioCraft Plus order)."""
    parts = [f"{req.bpm} bpm" if req.bpm else None, req.key, req.genre, req.mood, req.prompt]
    return ", ".join(p for p in parts if p)


def section_prompt_at(sections: list[Section], t: float) -> str:
    """The prompt of the section playing at `t` seconds ("" before the first)."""
    current = ""
    for s in sections:
        if s.start_s <= t:
            current = s.prompt
    return current


def make_plan(req: SongRequest, seed: int, kept: list[Segment] | tuple[Segment, ...] = ()) -> Plan:
    """The windows for a validated request. Segment 0 is text-only; segment i >= 1 re-generates
    the last `overlap_s` of segment i-1 as context and adds up to segment_s - overlap_s new.
    `kept`: the first windows, reused as they are from the song this one extends or redoes; the
    plan continues from the end of the last of them."""
    window = round(req.segment_s * FRAME_RATE)
    overlap = round(req.overlap_s * FRAME_RATE)
    total = math.ceil(round(req.duration_s * FRAME_RATE, 6))  # whole frames covering the track
    style = style_text(req)
    segments = list(kept)
    if segments and segments[-1].start_frame + segments[-1].n_frames >= total:
        end = segments[-1].start_frame + segments[-1].n_frames
        raise InvalidRequest("duration_s", f"must reach past the kept windows' end ({end / FRAME_RATE:g} s), "
                                           f"got {req.duration_s:g}")
    while not segments or segments[-1].start_frame + segments[-1].n_frames < total:
        i = len(segments)
        start = 0 if i == 0 else segments[-1].start_frame + segments[-1].n_frames - overlap
        n_frames = min(window, total - start)
        context = 0 if i == 0 else overlap
        new_start_s = (start + context) / FRAME_RATE
        section = section_prompt_at(req.sections, new_start_s) if req.sections else ""
        last = start + n_frames >= total
        if last and (req.outro or (req.outro is None and not req.sections and i > 0)):
            section = f"{section}, {OUTRO_TEXT}" if section else OUTRO_TEXT
        text = f"{style}, {section}" if section else style
        segments.append(Segment(i, start, n_frames, context, text, section, segment_seed(seed, i)))
    xfade = max(1, min(overlap, round(req.crossfade_s * FRAME_RATE)))
    return Plan(segments, float(req.duration_s), total, xfade, style)
