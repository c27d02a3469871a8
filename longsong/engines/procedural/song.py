"""The song-level choices every stage reads (`Song`), the sample rate and the 4/4 step grid."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

SR = 32000
STEPS = 16  # sixteenth-note steps per 4/4 bar

NOTE_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}


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
    swing: float

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

    def instruments(self) -> str:
        return f"bass={self.bass}, lead={self.lead}, pad={self.pad}, arp={self.arp}"
