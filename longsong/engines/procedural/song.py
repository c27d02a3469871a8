"""The song-level choices every stage reads (`Song`), the sample rate, the 4/4 step grid and its swing,
and the note `Event` every part emits."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SR = 32000
STEPS = 16  # sixteenth-note steps per 4/4 bar

NOTE_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
EIGHTH_SWING = ("swing", "shuffle")  # drum families whose swing delays the off-beat eighth, not sixteenth


@lru_cache(maxsize=64)
def parse_key(key: str) -> tuple[int, str]:
    """'F# minor' -> (6, 'minor'); KeyError or ValueError for anything else."""
    name, mode = key.split()
    if mode not in SCALES:
        raise ValueError(f"unknown mode {mode!r}")
    return (NOTE_PC[name[0]] + {"": 0, "#": 1, "b": -1}[name[1:]]) % 12, mode


@dataclass(frozen=True)
class Song:
    """Song-level choices, fixed by segment 0 and carried in the hand-off."""

    seed: int
    bpm: float
    key: str  # "A minor"
    progression: str  # roman numerals
    bars_per_chord: int
    genre: str
    drums: str  # drum pattern family
    bass: str
    lead: str
    pad: str
    arp: str
    swing: float  # delay of the swung off-beat in steps (eighths for EIGHTH_SWING families, else sixteenths)

    @property
    def step_samples(self) -> float:
        return SR * 60.0 / self.bpm / 4

    @property
    def bar_samples(self) -> float:
        return self.step_samples * STEPS

    @property
    def tonic(self) -> int:
        return parse_key(self.key)[0]

    @property
    def mode(self) -> str:
        return parse_key(self.key)[1]

    @property
    def phrase(self) -> int:
        """Bars per phrase (fills end it, a crash opens the next): a 12-bar blues phrases in twelves."""
        return 12 if len(self.progression.split()) == 12 else 8

    def instruments(self) -> str:
        arp = "none" if self.drums == "swing" else self.arp  # a jazz trio plays no arpeggio
        return f"bass={self.bass}, lead={self.lead}, pad={self.pad}, arp={arp}"

    def swung(self, step: float) -> float:
        """Step position after swing: a piecewise-linear warp of each swing unit (8th or 16th pair) that
        delays its off-beat by `swing` steps and keeps every beat (so the tempo) on the grid."""
        if not self.swing:
            return step
        unit = 4.0 if self.drums in EIGHTH_SWING else 2.0
        half = unit / 2
        base, pos = divmod(step, unit)
        if pos <= half:
            return base * unit + pos * (half + self.swing) / half
        return base * unit + half + self.swing + (pos - half) * (half - self.swing) / half


@dataclass(frozen=True)
class Event:
    step: float  # onset in sixteenth steps from the song start (before swing)
    role: str  # drums, bass, pad, lead, arp
    sound: str  # drum name or instrument
    pitches: tuple[int, ...]  # MIDI notes sounded together (drums: none)
    gate: int  # samples the note is held (drums: 0)
    gain: float


TAKE_MARK = 0x7A4E  # separates a take's seed from the keys in a bar's RNG entropy


def take_of(takes: tuple[tuple[int, int], ...], bar: int) -> int | None:
    """The seed of the take `bar` belongs to: the last (first bar, seed) at or before it; None before the
    first take (window 0's bars, drawn from the song seed alone)."""
    i = bisect_right(takes, bar, key=lambda t: t[0])
    return takes[i - 1][1] if i else None


def bar_rng(song: Song, part: int, *keys: int, take: int | None = None) -> np.random.Generator:
    """The RNG of one part of one bar: every choice is a function of (song seed, part, bar, ...) and, in
    a continuation window's new part, of the seed of the bar's take."""
    if take is None:
        return np.random.default_rng([song.seed, part, *keys])
    return np.random.default_rng([song.seed, part, *keys, TAKE_MARK, take])


def gate_samples(song: Song, steps: float) -> int:
    return round(steps * song.step_samples)
