"""The pitched notes of each bar: bass (pattern, walking line, boogie), chords (pad, piano strikes, jazz
comping), melody, arpeggio and the final cadence; `bar_events` is the whole bar in a fixed order."""

from __future__ import annotations

import math

import numpy as np

from longsong.engines.procedural.drums import DRUM_GAIN, drum_events
from longsong.engines.procedural.harmony import (
    KINDS,
    Arrangement,
    Chord,
    arrangement_at,
    chord_at,
    form_at,
    next_chord,
    place_in,
    section_of_bar,
)
from longsong.engines.procedural.song import SCALES, SR, STEPS, Event, Song, bar_rng, gate_samples, take_of

BASS_LINES = {"four": "..x...x...x...x.", "backbeat": "x.x.x.x.x.x.x.x.", "halftime": "x......x..x.....",
              "breakbeat": "x.........x.....", "none": "x..............."}  # swing walks, shuffle boogies
BASS_VARIANTS = {  # other rhythms a bar may take instead of the family's line
    "four": ("..x...x...x...xx", "..x...x.x.x...x.", "..x..xx...x...x."),
    "backbeat": ("x.x.x.x.x.x.xx.x", "x...x.x.x.x.x...", "x.x.x...x.x.x.xx"),
    "halftime": ("x......x....x...", "x.........x..x..", "x......x..x...x.", "x..x......x....."),
    "breakbeat": ("x.........x..x..", "x......x..x.....", "x.x.......x....."),
    "none": ("x.......x.......",),
}
BASS_LEVEL = {"none": 0.5}  # without drums a sustained bass would dominate the mix
RHYTHMS = (  # lead rhythms: (step, length in steps)
    ((0, 3), (4, 2), (6, 2), (8, 4), (12, 4)),
    ((0, 2), (2, 2), (4, 4), (10, 2), (12, 4)),
    ((0, 6), (6, 2), (8, 6), (14, 2)),
    ((2, 2), (4, 2), (6, 4), (12, 2), (14, 2)),
    ((0, 4), (4, 4), (8, 8)),
    ((0, 2), (3, 3), (6, 2), (8, 2), (11, 5)),
)
SWING_RHYTHMS = (  # eighth-note lines: the swing warp turns them into long-short pairs
    ((0, 2), (2, 2), (4, 2), (6, 4), (12, 2), (14, 2)),
    ((2, 2), (4, 2), (6, 2), (8, 4), (14, 2)),
    ((0, 3), (4, 2), (6, 2), (8, 2), (10, 6)),
    ((0, 2), (2, 2), (6, 2), (8, 2), (10, 2), (12, 4)),
    ((4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 2)),
)
CADENCE_RHYTHM = ((0, 4), (4, 4), (8, 8))  # the last bar of a phrase: the melody comes to rest
COMPS = (  # jazz comping figures: (step, length) of each chord stab
    ((0, 3.0), (6, 2.0)), ((2, 2.0), (8, 3.0)), ((6, 6.0),), ((0, 2.0), (10, 2.0), (14, 2.0)),
    ((4, 3.0), (10, 4.0)), ((2, 2.0), (6, 2.0), (12, 3.0)),
)
STRIKES = (((0, 8.0), (8, 8.0)), ((0, 6.0), (6, 10.0)), ((0, 10.0), (10, 6.0)), ((0, 3.0), (3, 5.0), (8, 8.0)))
MOVES = (-2, -1, -1, 0, 1, 1, 2, 3, -3)
PART_BASS, PART_LEAD, PART_VARY, PART_ARP, PART_PAD = 2, 3, 5, 6, 7  # RNG streams (drums 1, text's song 4)
ROLE_GAIN = {"bass": 0.32, "pad": 0.085, "comp": 0.13, "lead": 0.16, "arp": 0.075}


def scale_notes(song: Song, lo: int, hi: int, extra: tuple[int, ...] = ()) -> list[int]:
    scale = {(song.tonic + s) % 12 for s in SCALES[song.mode]} | set(extra)
    return [m for m in range(lo, hi) if m % 12 in scale]


def bass_events(song: Song, bar: int, chord: Chord, nxt: Chord, a: Arrangement, bars_in: int,
                bridge: bool, take: int | None = None) -> list[Event]:
    gain = a.bass * ROLE_GAIN["bass"] * BASS_LEVEL.get(song.drums, 1.0)
    if gain <= 0:
        return []
    rng = bar_rng(song, PART_BASS, bar, take=take)
    root = place_in(chord.pitch_classes(song.tonic)[:1], 31 if song.drums in ("swing", "shuffle") else 33)[0]
    if bridge:  # held roots; a jazz bass plays in two
        notes = [(0, root, 15.5)] if song.drums != "swing" else [(0, root, 7.6), (8, root + 7, 7.6)]
    elif song.drums == "swing":
        notes = [(4 * i, m, 3.8) for i, m in enumerate(walking_line(song, chord, nxt, rng))]
    elif song.drums == "shuffle":
        notes = boogie_line(song, chord, nxt, rng, bars_in)
    else:
        notes = pattern_line(song, root, rng, a.busy, bars_in)
    offbeat = 0.75 if song.drums == "shuffle" else 1.0  # a shuffle leans on the beat
    return [Event(bar * STEPS + s, "bass", song.bass, (m,), gate_samples(song, length),
                  gain * (1.0 if s == 0 else 0.88 + 0.1 * float(rng.random())) * (offbeat if s % 4 else 1.0))
            for s, m, length in notes]


def pattern_line(song: Song, root: int, rng: np.random.Generator, busy: float, bars_in: int
                 ) -> list[tuple[int, int, float]]:
    """The family's bass rhythm (or a variant) on the root: octave and fifth jumps, a pickup into the
    next phrase (or at random in busy sections), now and then a rest."""
    line = BASS_LINES[song.drums]
    if rng.random() < 0.2 + 0.4 * busy:
        variants = BASS_VARIANTS[song.drums]
        line = variants[int(rng.integers(len(variants)))]
    onsets = [i for i, c in enumerate(line) if c == "x"] + [STEPS]
    staccato = song.drums in ("four", "backbeat")
    notes = []
    for step, nxt in zip(onsets, onsets[1:]):
        roll = float(rng.random())
        if step and roll > 0.93:
            continue
        length = min(nxt - step, 1.6) if staccato else (nxt - step) * 0.95
        midi = root + 12 if staccato and roll < 0.2 else root + 7 if nxt == STEPS and roll > 0.8 else root
        notes.append((step, midi, length))
    last = bars_in % song.phrase == song.phrase - 1
    if (last or rng.random() < 0.3 * busy) and notes and notes[-1][0] < 14:
        notes.append((14, root + (7 if last else 12), 1.6))
    return notes


def walking_line(song: Song, chord: Chord, nxt: Chord, rng: np.random.Generator) -> list[int]:
    """Four quarter notes: the root, two chord or scale tones, and a step into the next bar's root."""
    pcs = chord.pitch_classes(song.tonic)
    root = place_in(pcs[:1], 31)[0]
    third, fifth = (root + (pc - root) % 12 for pc in pcs[1:3])
    scale = scale_notes(song, 24, 60, pcs)
    step_up = next(m for m in scale if m > root)
    b2, b3 = ((third, fifth), (step_up, third), (root + 12, fifth), (fifth, third))[int(rng.integers(4))]
    tpc = nxt.pitch_classes(song.tonic)[0]
    target = min((tpc + 12 * k for k in range(2, 5)), key=lambda m: (abs(m - b3), m))
    if b3 < target and rng.random() < 0.3:
        return [root, b2, b3, target - 1]  # chromatic approach from below
    side = [m for m in scale if (m < target if b3 <= target else m > target)]
    return [root, b2, b3, (side[-1] if b3 <= target else side[0]) if side else target]


def boogie_line(song: Song, chord: Chord, nxt: Chord, rng: np.random.Generator, bars_in: int
                ) -> list[tuple[int, int, float]]:
    """Shuffle bass: root, fifth, sixth (seventh on minor chords), fifth, two eighths each; a phrase's
    last bar (or a random one) walks up to the next root instead."""
    root = place_in(chord.pitch_classes(song.tonic)[:1], 31)[0]
    top = root + (9 if chord.quality in ("maj", "dom7", "maj7") else 10)
    line = [root, root, root + 7, root + 7, top, top, root + 7, root + 7]
    if bars_in % song.phrase == song.phrase - 1 or rng.random() < 0.25:
        target = root + (nxt.pitch_classes(song.tonic)[0] - root) % 12
        line[6:] = [target - 2 if target - 2 > root else root + 7, target - 1]
    return [(2 * i, m, 1.8) for i, m in enumerate(line)]


def pad_events(song: Song, bar: int, chord: Chord, since: int, a: Arrangement, take: int | None = None
               ) -> list[Event]:
    """Sustained chord at each chord change; a struck piano re-plays it in a per-bar rhythm; a jazz
    pianist comps rootless voicings in short stabs."""
    if a.pad <= 0:
        return []
    rng = bar_rng(song, PART_PAD, bar, take=take)
    pcs = chord.pitch_classes(song.tonic)
    if song.drums == "swing":
        voicing = place_in(pcs[1:] if len(pcs) > 3 else pcs[1:] + pcs[:1], a.pad_low + int(rng.integers(3)))
        hits, gain = COMPS[int(rng.integers(len(COMPS)))], a.pad * ROLE_GAIN["comp"]
    else:
        voicing = place_in(pcs, a.pad_low + 2 * int(rng.integers(3)))
        gain = a.pad * ROLE_GAIN["pad"]
        if song.pad == "piano":
            hits = STRIKES[int(rng.integers(len(STRIKES)))] if a.busy > 0.3 else STRIKES[0]
        elif bar % song.bars_per_chord == 0 or bar == since:
            hits = ((0, float(STEPS * (song.bars_per_chord - bar % song.bars_per_chord))),)
        else:
            return []
    return [Event(bar * STEPS + s, "pad", song.pad, tuple(voicing), gate_samples(song, length),
                  gain * (0.85 + 0.15 * float(rng.random()))) for s, length in hits]


def lead_events(song: Song, bar: int, chord: Chord, kind: str, run: int, a: Arrangement, bars_in: int,
                take: int | None = None) -> list[Event]:
    """A melody in the section's register: a question phrase and an answer phrase (the motif, repeated
    every two phrases of the section within a take), with per-bar changes (neighbour notes, rests,
    another rhythm) and phrase endings that come to rest on a chord tone."""
    gain = a.lead * ROLE_GAIN["lead"]
    if gain <= 0:
        return []
    rng = bar_rng(song, PART_LEAD, run % 2 * song.phrase + bars_in % song.phrase, KINDS.index(kind), take=take)
    vary = bar_rng(song, PART_VARY, bar, take=take)
    pcs = chord.pitch_classes(song.tonic)
    notes = scale_notes(song, a.lead_low, a.lead_low + 24, pcs)
    tones = [m for m in notes if m % 12 in pcs and a.lead_low + 4 <= m <= a.lead_low + 21]
    pitch = tones[rng.integers(len(tones))]
    rhythms = SWING_RHYTHMS if song.drums in ("swing", "shuffle") else RHYTHMS
    rhythm = rhythms[rng.integers(len(rhythms))]
    pos = bars_in % song.phrase
    if pos == song.phrase - 1:
        rhythm = CADENCE_RHYTHM
    elif vary.random() < 0.1:  # the same contour in another rhythm
        rhythm = rhythms[int(vary.integers(len(rhythms)))]
    change = 0.88 if run < 2 else 0.8  # a repeat of the motif is ornamented more
    events = []
    for k, (step, length) in enumerate(rhythm):
        i = min(len(notes) - 1, max(0, notes.index(pitch) + int(rng.choice(MOVES))))
        pitch = notes[i] if step % 4 else min(tones, key=lambda m: (abs(m - notes[i]), m))
        roll = float(vary.random())
        if k and roll < 0.06:
            continue  # a rest
        if roll > change:  # a neighbour note, below or above
            sounded = notes[min(len(notes) - 1, max(0, i + (1 if roll > (1 + change) / 2 else -1)))]
        else:
            sounded = pitch
        if pos == song.phrase // 2 - 1 and k == len(rhythm) - 1:
            length = STEPS - step  # the half phrase ends on a held note
        events.append(Event(bar * STEPS + step, "lead", song.lead, (sounded,), gate_samples(song, length * 0.9),
                            gain * (1.0 if step % 4 == 0 else 0.85) * (0.88 + 0.12 * float(vary.random()))))
    return events


def arp_events(song: Song, bar: int, chord: Chord, a: Arrangement, bars_in: int, take: int | None = None
               ) -> list[Event]:
    """Chord tones over two octaves, indexed by the absolute step so the line never restarts; its
    direction changes every two bars, a few steps rest, and it gives way to a phrase's fill."""
    gain = a.arp * ROLE_GAIN["arp"]
    if gain <= 0:
        return []
    voicing = place_in(chord.pitch_classes(song.tonic), 60)
    tones = voicing + [m + 12 for m in voicing]
    order = int(bar_rng(song, PART_ARP, bar // 2, take=take).integers(3))
    rests = bar_rng(song, PART_ARP, bar, 1, take=take).random(STEPS) < 0.12
    rate = 1 if song.bpm <= 130 else 2
    last = 12 if bars_in % song.phrase == song.phrase - 1 else STEPS
    gate = gate_samples(song, rate * 0.9)
    events = []
    for s in range(0, last, rate):
        if rests[s] and s % 4:
            continue
        pitch = tones[arp_index(order, (bar * STEPS + s) // rate, len(tones))]
        events.append(Event(bar * STEPS + s, "arp", song.arp, (pitch,), gate, gain * (1.0 if s % 4 == 0 else 0.8)))
    return events


def arp_index(order: int, i: int, n: int) -> int:
    """The i-th note of an arpeggio over n tones going up (0), down (1) or up and down (2)."""
    if order == 0:
        return i % n
    if order == 1:
        return n - 1 - i % n
    k = i % (2 * n - 2)
    return k if k < n else 2 * n - 2 - k


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
               end: int, takes: tuple[tuple[int, int], ...] = ()) -> list[Event]:
    """All notes starting in `bar`, in a fixed part order (the summation order is part of exactness);
    every random choice is drawn from the seed of the bar's take in `takes`."""
    if final is not None and bar >= final:
        return final_events(song, bar, end - round(bar * song.bar_samples)) if bar == final else []
    kind, since = section_of_bar(sections, bar)
    bars_in = bar - since
    form, run = form_at(kind, bars_in, song.phrase)
    a = arrangement_at(song, kind, bars_in)
    chord = chord_at(song, sections, bar)
    nxt = next_chord(song, sections, bar) if song.drums in ("swing", "shuffle") else chord
    take = take_of(takes, bar)
    return (drum_events(song, bar, form, a, bars_in, take)
            + bass_events(song, bar, chord, nxt, a, bars_in, form == "bridge", take)
            + pad_events(song, bar, chord, since, a, take)
            + lead_events(song, bar, chord, form, run, a, bars_in, take)
            + arp_events(song, bar, chord, a, bars_in, take))
