"""What plays in each bar: the section in effect, its arrangement, the chord, and chord voicing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from longsong.engines.procedural.song import SCALES, Song

CHORD_TONES = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "maj7": (0, 4, 7, 11),
               "min7": (0, 3, 7, 10), "dom7": (0, 4, 7, 10)}
ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii")
ROMAN_RE = re.compile(r"^(b?)(vii|vi|iv|v|iii|ii|i)(maj7|7|o)?$", re.IGNORECASE)
CADENCE = {"major": "IV V I I", "minor": "iv V i i"}
KINDS = ("full", "intro", "verse", "build", "chorus", "bridge", "outro")
DRUM_LEVEL = {"off": 0, "hats": 1, "groove": 2, "full": 3}


@dataclass(frozen=True)
class Arrangement:
    drums: str  # off, hats, groove, full
    bass: float
    pad: float
    lead: float
    arp: float


ARRANGEMENTS = {
    "full": Arrangement("full", 1.0, 0.8, 0.9, 0.0),
    "intro": Arrangement("hats", 0.0, 1.3, 0.0, 1.0),
    "verse": Arrangement("groove", 1.0, 0.7, 0.0, 0.8),
    "build": Arrangement("groove", 1.0, 0.9, 0.5, 1.0),
    "chorus": Arrangement("full", 1.0, 1.0, 1.0, 0.5),
    "bridge": Arrangement("hats", 0.8, 1.0, 0.7, 0.0),
    "outro": Arrangement("groove", 1.0, 1.0, 0.0, 0.6),
}


@dataclass(frozen=True)
class Chord:
    root: int  # semitones above the tonic
    quality: str

    def pitch_classes(self, tonic: int) -> tuple[int, ...]:
        return tuple((tonic + self.root + i) % 12 for i in CHORD_TONES[self.quality])


def parse_chord(numeral: str, mode: str) -> Chord:
    m = ROMAN_RE.match(numeral)
    if not m:
        raise ValueError(f"bad chord numeral {numeral!r}")
    flat, degree, suffix = m.groups()
    major = degree.isupper()
    root = SCALES[mode][ROMAN.index(degree.lower())] - (1 if flat else 0)
    quality = {"maj7": "maj7", "7": "dom7" if major else "min7", "o": "dim"}.get(suffix or "",
                                                                               "maj" if major else "min")
    return Chord(root % 12, quality)


@lru_cache(maxsize=64)
def parse_progression(progression: str, mode: str) -> tuple[Chord, ...]:
    chords = tuple(parse_chord(n, mode) for n in progression.split())
    if not chords:
        raise ValueError("empty progression")
    return chords


def section_of_bar(sections: tuple[tuple[int, str], ...], bar: int) -> tuple[str, int]:
    """(kind, first bar of that section) in effect at `bar`."""
    kind, since = sections[0][1], sections[0][0]
    for start, k in sections:
        if start <= bar:
            kind, since = k, start
    return kind, since


def chord_at(song: Song, sections: tuple[tuple[int, str], ...], bar: int) -> Chord:
    """The progression runs on the absolute bar count; the outro cycles a cadence to the tonic."""
    kind, since = section_of_bar(sections, bar)
    if kind == "outro":
        return parse_progression(CADENCE[song.mode], song.mode)[((bar - since) // song.bars_per_chord) % 4]
    chords = parse_progression(song.progression, song.mode)
    shift = len(chords) // 2 if kind == "bridge" else 0
    return chords[(bar // song.bars_per_chord + shift) % len(chords)]


def arrangement_at(kind: str, bars_in: int) -> Arrangement:
    """The outro thins out: drums to hats after 4 bars, to nothing after 8."""
    a = ARRANGEMENTS[kind]
    if kind != "outro":
        return a
    drums = "groove" if bars_in < 4 else "hats" if bars_in < 8 else "off"
    return Arrangement(drums, a.bass, a.pad, a.lead, a.arp if bars_in < 8 else 0.0)


def place_in(pcs: tuple[int, ...], low: int) -> list[int]:
    """Each pitch class in the octave starting at MIDI `low`: close voicing, smooth voice leading."""
    return sorted(low + (pc - low) % 12 for pc in pcs)
