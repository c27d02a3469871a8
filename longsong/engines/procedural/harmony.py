"""What plays in each bar: the section in effect, its arrangement, the chord, and chord voicing."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from longsong.engines.procedural.song import SCALES, Song

CHORD_TONES = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "maj7": (0, 4, 7, 11),
               "min7": (0, 3, 7, 10), "dom7": (0, 4, 7, 10)}
ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii")
ROMAN_RE = re.compile(r"^(b?)(vii|vi|iv|v|iii|ii|i)(maj7|7|o)?$", re.IGNORECASE)
CADENCE = {"major": "IV V I I", "minor": "iv V i i"}
KINDS = ("full", "intro", "verse", "build", "chorus", "bridge", "outro")
DRUM_LEVELS = ("off", "hats", "half", "groove", "full")  # half: the bridge's sparse half-time groove
FULL_FORM = ("verse", "verse", "chorus", "chorus", "verse", "verse", "chorus", "chorus", "bridge", "chorus",
             "chorus")  # one kind per phrase: about three minutes at 120 bpm


@dataclass(frozen=True)
class Arrangement:
    """Who plays, how loud (role gain factors), in which register and how busily."""

    drums: str  # a DRUM_LEVELS name
    bass: float
    pad: float
    lead: float
    arp: float
    lead_low: int  # lowest MIDI note of the melody's range (a section's register)
    pad_low: int  # lowest MIDI note of the chord voicing
    busy: float  # 0..1: how often the per-bar variation adds ghost notes, extra kicks, passing tones


ARRANGEMENTS = {
    "full": Arrangement("full", 1.0, 0.8, 0.9, 0.4, 64, 54, 0.6),
    "intro": Arrangement("hats", 0.0, 1.3, 0.0, 1.0, 60, 50, 0.2),
    "verse": Arrangement("groove", 1.0, 0.7, 0.75, 0.8, 57, 52, 0.4),
    "build": Arrangement("groove", 1.0, 0.9, 0.5, 1.0, 62, 54, 0.7),
    "chorus": Arrangement("full", 1.0, 1.0, 1.0, 0.5, 67, 57, 0.8),
    "bridge": Arrangement("half", 0.8, 1.0, 0.7, 0.0, 62, 50, 0.3),
    "outro": Arrangement("groove", 1.0, 1.0, 0.0, 0.6, 60, 54, 0.3),
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


def form_at(kind: str, bars_in: int, phrase: int) -> tuple[str, int]:
    """The kind that plays and which of its consecutive phrases this is: a song without section words
    still has a form, 'full' walks FULL_FORM one phrase at a time."""
    i = bars_in // phrase
    if kind != "full":
        return kind, i
    kind = FULL_FORM[i % len(FULL_FORM)]
    run = 0
    while run < i and FULL_FORM[(i - run - 1) % len(FULL_FORM)] == kind:
        run += 1
    return kind, run


def chord_at(song: Song, sections: tuple[tuple[int, str], ...], bar: int) -> Chord:
    """The progression runs on the absolute bar count; the outro cycles a cadence to the tonic."""
    kind, since = section_of_bar(sections, bar)
    if kind == "outro":
        return parse_progression(CADENCE[song.mode], song.mode)[((bar - since) // song.bars_per_chord) % 4]
    chords = parse_progression(song.progression, song.mode)
    shift = len(chords) // 2 if form_at(kind, bar - since, song.phrase)[0] == "bridge" else 0
    return chords[(bar // song.bars_per_chord + shift) % len(chords)]


def next_chord(song: Song, sections: tuple[tuple[int, str], ...], bar: int) -> Chord:
    """The chord a line in `bar` leads to, as far as `bar` knows: a section that starts later is not
    known yet when this bar is first rendered, so it must not change this bar's notes."""
    return chord_at(song, tuple(s for s in sections if s[0] <= bar), bar + 1)


def arrangement_at(song: Song, kind: str, bars_in: int) -> Arrangement:
    """The section's arrangement as it develops: a verse's melody enters in its second phrase, the outro
    thins out (drums to hats after 4 bars, to nothing after 8), a jazz trio has no arpeggio."""
    form, run = form_at(kind, bars_in, song.phrase)
    a = ARRANGEMENTS[form]
    if form == "verse" and run == 0:
        a = replace(a, lead=0.0)
    if kind == "outro":
        a = replace(a, drums="groove" if bars_in < 4 else "hats" if bars_in < 8 else "off",
                    arp=a.arp if bars_in < 8 else 0.0)
    if song.drums == "swing":
        a = replace(a, arp=0.0)
    return a


def place_in(pcs: tuple[int, ...], low: int) -> list[int]:
    """Each pitch class in the octave starting at MIDI `low`: close voicing, smooth voice leading."""
    return sorted(low + (pc - low) % 12 for pc in pcs)
