"""The note events of each bar: drums, bass, pad, lead, arpeggio, and the final cadence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from longsong.engines.procedural.harmony import (
    DRUM_LEVEL,
    KINDS,
    Chord,
    arrangement_at,
    chord_at,
    parse_progression,
    place_in,
    section_of_bar,
)
from longsong.engines.procedural.song import SCALES, SR, STEPS, Song

# Drum lines: (sound, 16-step pattern with x = hit and o = ghost, lowest drum level that plays it).
DRUM_LINES = {
    "four": (("kick", "x...x...x...x...", "groove"), ("clap", "....x.......x...", "groove"),
             ("hat", "..x...x...x...x.", "hats"), ("shaker", "oxoooxoooxoooxoo", "full")),
    "backbeat": (("kick", "x......ox.x.....", "groove"), ("snare", "....x.......x...", "groove"),
                 ("hat", "x.x.x.x.x.x.x.x.", "hats"), ("open", "..............x.", "full")),
    "halftime": (("kick", "x......x..x.....", "groove"), ("snare", "........x.......", "groove"),
                 ("hat", "x.x.x.x.x.x.x.x.", "hats"), ("hat", ".o.o.o.o.o.o.o.o", "full")),
    "breakbeat": (("kick", "x.........x.....", "groove"), ("snare", "....x.......x...", "groove"),
                  ("hat", "x.x.x.x.x.x.x.x.", "hats"), ("snare", ".......o.o....o.", "full")),
}
BASS_LINES = {"four": "..x...x...x...x.", "backbeat": "x.x.x.x.x.x.x.x.", "halftime": "x......x..x.....",
              "breakbeat": "x.........x.....", "none": "x..............."}
BASS_LEVEL = {"none": 0.5}  # without drums a sustained bass would dominate the mix
RHYTHMS = (  # lead rhythms: (step, length in steps)
    ((0, 3), (4, 2), (6, 2), (8, 4), (12, 4)),
    ((0, 2), (2, 2), (4, 4), (10, 2), (12, 4)),
    ((0, 6), (6, 2), (8, 6), (14, 2)),
    ((2, 2), (4, 2), (6, 4), (12, 2), (14, 2)),
    ((0, 4), (4, 4), (8, 8)),
    ((0, 2), (3, 3), (6, 2), (8, 2), (11, 5)),
)
MOVES = (-2, -1, -1, 0, 1, 1, 2, 3, -3)
PART_DRUMS, PART_BASS, PART_LEAD = 1, 2, 3  # RNG streams per bar part (text's PART_SONG is 4)
DRUM_GAIN = {"kick": 0.55, "snare": 0.32, "clap": 0.3, "hat": 0.14, "open": 0.11, "shaker": 0.08, "crash": 0.12}
ROLE_GAIN = {"bass": 0.32, "pad": 0.085, "lead": 0.16, "arp": 0.075}


@dataclass(frozen=True)
class Event:
    step: float  # onset in sixteenth steps from the song start
    role: str  # drums, bass, pad, lead, arp
    sound: str  # drum name or instrument
    pitches: tuple[int, ...]  # MIDI notes sounded together (drums: none)
    gate: int  # samples the note is held (drums: 0)
    gain: float


def bar_rng(song: Song, part: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([song.seed, part, *keys])


def gate_samples(song: Song, steps: float) -> int:
    return round(steps * song.step_samples)


def drum_events(song: Song, bar: int, level: str, bars_in: int) -> list[Event]:
    if song.drums == "none" or level == "off":
        return []
    rng = bar_rng(song, PART_DRUMS, bar)
    base = bar * STEPS
    fill = DRUM_LEVEL[level] >= 2 and bars_in % 8 == 7 and rng.random() < 0.7
    events = []
    for sound, pattern, needs in DRUM_LINES[song.drums]:
        if DRUM_LEVEL[level] < DRUM_LEVEL[needs]:
            continue
        for step, hit in enumerate(pattern):
            if hit != "." and not (fill and step >= 12 and sound != "kick"):
                gain = DRUM_GAIN[sound] * (1.0 if hit == "x" else 0.45) * (0.85 + 0.15 * rng.random())
                events.append(Event(base + step, "drums", sound, (), 0, gain))
    if fill:
        events += [Event(base + s, "drums", "snare", (), 0, DRUM_GAIN["snare"] * (0.5 + 0.15 * (s - 12)))
                   for s in (12, 13, 14, 15)]
    if level == "full" and bars_in % 8 == 0:
        events.append(Event(base, "drums", "crash", (), 0, DRUM_GAIN["crash"]))
    return events


def bass_events(song: Song, bar: int, chord: Chord, kind: str, gain: float) -> list[Event]:
    if gain <= 0:
        return []
    gain *= BASS_LEVEL.get(song.drums, 1.0)
    root = place_in(chord.pitch_classes(song.tonic)[:1], 33)[0]
    if kind == "bridge":
        return [Event(bar * STEPS, "bass", song.bass, (root,), gate_samples(song, 15.5), gain)]
    rng = bar_rng(song, PART_BASS, bar)
    line = BASS_LINES[song.drums]
    onsets = [i for i, c in enumerate(line) if c == "x"] + [STEPS]
    staccato = song.drums in ("four", "backbeat")
    events = []
    for step, nxt in zip(onsets, onsets[1:]):
        length = min(nxt - step, 1.6) if staccato else (nxt - step) * 0.95
        roll = rng.random()
        midi = root + 12 if staccato and roll < 0.2 else root + 7 if nxt == STEPS and roll > 0.8 else root
        events.append(Event(bar * STEPS + step, "bass", song.bass, (midi,), gate_samples(song, length), gain))
    return events


def pad_events(song: Song, bar: int, chord: Chord, since: int, gain: float) -> list[Event]:
    """Sustained chord at each chord change (a struck piano re-plays it every half bar)."""
    if gain <= 0:
        return []
    voicing = place_in(chord.pitch_classes(song.tonic), 54)
    if song.pad == "piano":
        hits = [(0, 8.0), (8, 8.0)]
    elif bar % song.bars_per_chord == 0 or bar == since:
        hits = [(0, float(STEPS * (song.bars_per_chord - bar % song.bars_per_chord)))]
    else:
        return []
    return [Event(bar * STEPS + s, "pad", song.pad, tuple(voicing), gate_samples(song, length), gain)
            for s, length in hits]


def lead_events(song: Song, bar: int, chord: Chord, kind: str, gain: float) -> list[Event]:
    """A melody that repeats every two progression cycles: chord tones on the beats, steps between."""
    if gain <= 0:
        return []
    cycle = 2 * song.bars_per_chord * len(parse_progression(song.progression, song.mode))
    rng = bar_rng(song, PART_LEAD, bar % cycle, KINDS.index(kind))
    pcs = chord.pitch_classes(song.tonic)
    scale = {(song.tonic + s) % 12 for s in SCALES[song.mode]} | set(pcs)
    notes = [m for m in range(60, 88) if m % 12 in scale]
    tones = [m for m in notes if m % 12 in pcs and 64 <= m <= 81]
    pitch = tones[rng.integers(len(tones))]
    events = []
    for step, length in RHYTHMS[rng.integers(len(RHYTHMS))]:
        i = min(len(notes) - 1, max(0, notes.index(pitch) + int(rng.choice(MOVES))))
        pitch = notes[i] if step % 4 else min(tones, key=lambda m: (abs(m - notes[i]), m))
        events.append(Event(bar * STEPS + step, "lead", song.lead, (pitch,), gate_samples(song, length * 0.9),
                            gain * (1.0 if step % 4 == 0 else 0.85)))
    return events


def arp_events(song: Song, bar: int, chord: Chord, gain: float) -> list[Event]:
    """Chord tones climbing two octaves, indexed by the absolute step so it never restarts."""
    if gain <= 0:
        return []
    voicing = place_in(chord.pitch_classes(song.tonic), 60)
    tones = voicing + [m + 12 for m in voicing]
    rate = 1 if song.bpm <= 130 else 2
    gate = gate_samples(song, rate * 0.9)
    return [Event(bar * STEPS + s, "arp", song.arp, (tones[((bar * STEPS + s) // rate) % len(tones)],), gate,
                  gain * (1.0 if s % 4 == 0 else 0.8)) for s in range(0, STEPS, rate)]


def final_events(song: Song, bar: int, gate: int) -> list[Event]:
    """The final cadence: tonic chord, bass and melody held to the end, one last hit."""
    pcs = Chord(0, "maj" if song.mode == "major" else "min").pitch_classes(song.tonic)
    base = bar * STEPS
    events = [Event(base, "pad", song.pad, tuple(place_in(pcs, 54)), gate, ROLE_GAIN["pad"]),
              Event(base, "bass", song.bass, tuple(place_in(pcs[:1], 33)), gate,
                    ROLE_GAIN["bass"] * BASS_LEVEL.get(song.drums, 1.0)),
              Event(base, "lead", song.lead, tuple(place_in(pcs[:1], 67)), gate, ROLE_GAIN["lead"] * 0.6)]
    if song.drums != "none":
        events += [Event(base, "drums", "kick", (), 0, DRUM_GAIN["kick"]),
                   Event(base, "drums", "crash", (), 0, DRUM_GAIN["crash"])]
    return events


def final_bar(song: Song, sections: tuple[tuple[int, str], ...], end: int) -> int | None:
    """In an outro window, the bar where the final cadence starts: at least 3 s before the end."""
    if sections[-1][1] != "outro":
        return None
    hold = max(1, math.ceil(3.0 * SR / song.bar_samples))
    bar = max(0, math.floor(end / song.bar_samples) - hold)
    return bar - bar % song.bars_per_chord  # on a chord change: no earlier chord still held


def bar_events(song: Song, sections: tuple[tuple[int, str], ...], bar: int, final: int | None,
               end: int) -> list[Event]:
    """All notes starting in `bar`, in a fixed part order (the summation order is part of exactness)."""
    if final is not None and bar >= final:
        return final_events(song, bar, end - round(bar * song.bar_samples)) if bar == final else []
    kind, since = section_of_bar(sections, bar)
    a = arrangement_at(kind, bar - since)
    chord = chord_at(song, sections, bar)
    return (drum_events(song, bar, a.drums, bar - since)
            + bass_events(song, bar, chord, kind, a.bass * ROLE_GAIN["bass"])
            + pad_events(song, bar, chord, since, a.pad * ROLE_GAIN["pad"])
            + lead_events(song, bar, chord, kind, a.lead * ROLE_GAIN["lead"])
            + arp_events(song, bar, chord, a.arp * ROLE_GAIN["arp"]))
