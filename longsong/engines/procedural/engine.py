"""`ProceduralEngine`: the window request -> song, section timeline and audio; `State` is its hand-off."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from longsong.engines.base import EngineError, StepCallback, WindowRequest, WindowResult
from longsong.engines.procedural.drums import DRUM_LINES
from longsong.engines.procedural.harmony import KINDS, parse_progression
from longsong.engines.procedural.mix import render
from longsong.engines.procedural.patterns import final_bar
from longsong.engines.procedural.song import SR, Song
from longsong.engines.procedural.synth import TIMBRES
from longsong.engines.procedural.text import choose_song, find_section
from longsong.frames import FRAME_RATE

FRAME = SR // FRAME_RATE  # samples per plan frame
HANDOFF_VERSION = 2  # 2 added the take timeline; a version-1 hand-off loads with none
MAX_SEED = 2**63  # seeds (the song's, each take's) are request seeds modulo this


@dataclass(frozen=True)
class State:
    """The hand-off: song choices, where the window ended, when each section started, and when each
    take (a continuation window's seed) started; bars before the first take use the song seed alone."""

    song: Song
    end_frame: int
    sections: tuple[tuple[int, str], ...]  # (first bar, kind), ascending
    takes: tuple[tuple[int, int], ...] = ()  # (first bar, seed), ascending

    def to_bytes(self) -> bytes:
        body = {"v": HANDOFF_VERSION, "song": asdict(self.song), "end_frame": self.end_frame,
                "sections": [list(s) for s in self.sections], "takes": [list(t) for t in self.takes]}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "State":
        try:
            body = json.loads(data)
            if body["v"] not in (1, HANDOFF_VERSION):
                raise ValueError(f"version {body['v']!r}, expected 1 or {HANDOFF_VERSION}")
            song = Song(**{f.name: body["song"][f.name] for f in fields(Song)})
            sections = tuple((int(bar), str(kind)) for bar, kind in body["sections"])
            takes = tuple((bar, seed) for bar, seed in body["takes"]) if body["v"] >= 2 else ()
            state = cls(song, int(body["end_frame"]), sections, takes)
            check_state(state)
            return state
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise EngineError(f"procedural: bad hand-off state ({type(e).__name__}: {e}); expected the "
                              f"JSON this engine wrote at the end of the previous window") from None


def check_state(state: State) -> None:
    """Reject a hand-off whose values would make the synthesis fail or misbehave."""
    s = state.song
    if not (isinstance(s.seed, int) and s.seed >= 0 and isinstance(s.bars_per_chord, int)
            and s.bars_per_chord >= 1 and 40 <= s.bpm <= 240 and 0 <= s.swing < 1 and state.end_frame >= 0):
        raise ValueError("seed, bpm, bars_per_chord, swing or end_frame out of range")
    bars = [bar for bar, _ in state.sections]
    if not bars or bars[0] != 0 or any(a >= b for a, b in zip(bars, bars[1:])):
        raise ValueError("the section timeline must start at bar 0 and ascend")
    if any(kind not in KINDS for _, kind in state.sections) or s.drums not in DRUM_LINES:
        raise ValueError("unknown section kind or drum family")
    for role in ("bass", "lead", "pad", "arp"):
        if f"{role}:{getattr(s, role)}" not in TIMBRES:
            raise ValueError(f"unknown {role} instrument {getattr(s, role)!r}")
    parse_progression(s.progression, s.mode)
    if not all(is_int(bar) and bar >= 0 and is_int(seed) and 0 <= seed < MAX_SEED
               for bar, seed in state.takes):
        raise ValueError("a take needs an integer first bar >= 0 and an integer seed in [0, 2**63)")
    if any(a[0] >= b[0] for a, b in zip(state.takes, state.takes[1:])):
        raise ValueError("the take timeline must ascend")


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def next_sections(state: State, kind: str, new_start: int) -> tuple[tuple[int, str], ...]:
    """Append a section change at the first bar line of the new part (the context stays as it was)."""
    if state.sections[-1][1] == kind:
        return state.sections
    bar = max(state.sections[-1][0] + 1, math.ceil(new_start / state.song.bar_samples))
    return (*state.sections, (bar, kind))


def next_takes(state: State, seed: int, new_start: int) -> tuple[tuple[int, int], ...]:
    """Start the window's take (its seed) at the first bar line of the new part: a bar that starts in the
    context keeps the take it was rendered with, so the context stays sample-identical (a note at or after
    the previous window's end reached none of its samples: the reverb has a pre-delay). The same seed
    again continues its take; a take that starts at or after that bar was never heard, and is replaced."""
    bar = math.ceil(new_start / state.song.bar_samples)
    kept = tuple(t for t in state.takes if t[0] < bar)
    return kept if kept and kept[-1][1] == seed else (*kept, (bar, seed))


class ProceduralEngine:
    """Offline engine: parses tempo, key, genre, mood, instruments and section from the text and
    synthesizes drums, bass, pad, lead and arpeggio; >100x real time on one CPU core."""

    name = "procedural"
    model = "procedural-v1"
    version = "2"  # 2: a continuation window's seed picks its take (before, later windows ignored it)
    sample_rate = SR
    channels = 2
    reuses_context_audio = False  # it synthesizes the whole window again

    def generate(self, req: WindowRequest, on_step: StepCallback) -> WindowResult:
        if req.n_frames <= 0 or req.context_frames < 0 or req.n_frames <= req.context_frames:
            raise EngineError(f"procedural: window of {req.n_frames} frames with {req.context_frames} "
                              f"context frames; need n_frames > context_frames >= 0")
        kind = find_section(req.text)
        if req.handoff is None:
            if req.context_frames:
                raise EngineError(f"procedural: {req.context_frames} context frames but no hand-off state")
            state = State(choose_song(req.text, req.seed % MAX_SEED), 0, ((0, kind),))
        else:
            state = State.from_bytes(req.handoff)
        start_frame = state.end_frame - req.context_frames
        if start_frame < 0:
            raise EngineError(f"procedural: {req.context_frames} context frames reach before the song start "
                              f"(previous window ended at frame {state.end_frame})")
        sections = next_sections(state, kind, state.end_frame * FRAME)
        takes = () if req.handoff is None else next_takes(state, req.seed % MAX_SEED, state.end_frame * FRAME)
        song = state.song
        end_frame = start_frame + req.n_frames
        final = final_bar(song, sections, end_frame * FRAME)
        audio = render(song, sections, final, start_frame * FRAME, req.n_frames * FRAME, on_step, takes)
        details = {"bpm": f"{song.bpm:g}", "key": song.key, "progression": song.progression,
                   "bars_per_chord": str(song.bars_per_chord), "genre": song.genre, "drums": song.drums,
                   "instruments": song.instruments(), "section": kind, "song_seed": str(song.seed),
                   "start_s": f"{start_frame / FRAME_RATE:g}", "sampling": "ignored (procedural engine)"}
        if final is not None:
            details["final_cadence_s"] = f"{round(final * song.bar_samples) / SR:.6f}"
        if takes:
            details["take_seed"] = str(takes[-1][1])
        return WindowResult(audio, State(song, end_frame, sections, takes).to_bytes(), details)
