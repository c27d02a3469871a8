"""The drum part of each bar: the family's groove at the section's level, per-bar variation, fills that
end each phrase and the crash that opens the next."""

from __future__ import annotations

import numpy as np

from longsong.engines.procedural.harmony import Arrangement
from longsong.engines.procedural.song import STEPS, Event, Song, bar_rng

PART_DRUMS = 1  # RNG stream of the drums (patterns uses 2, 3, 5, 6; text's PART_SONG is 4)
LEVEL_CODE = {"off": "", "hats": "h", "half": "b", "groove": "g", "full": "f"}
# Drum lines: (sound, 16-step pattern with x = hit and o = ghost, the levels that play it:
# h hats (intro), b half (bridge), g groove (verse), f full (chorus)).
DRUM_LINES = {
    "four": (("kick", "x...x...x...x...", "gf"), ("clap", "....x.......x...", "gf"),
             ("clap", "....x.......x...", "b"), ("hat", "..x...x...x...x.", "hbg"),
             ("open", "..x...x...x...x.", "f"), ("shaker", "oxoooxoooxoooxoo", "f")),
    "backbeat": (("kick", "x......ox.x.....", "gf"), ("kick", "x.......x.......", "b"),
                 ("snare", "....x.......x...", "gf"), ("rim", "....x.......x...", "b"),
                 ("hat", "x.x.x.x.x.x.x.x.", "hbg"), ("ride", "x.x.x.x.x.x.x.x.", "f"),
                 ("open", "..............x.", "f")),
    "halftime": (("kick", "x......x..x.....", "gf"), ("kick", "x...............", "b"),
                 ("snare", "........x.......", "gf"), ("rim", "........x.......", "b"),
                 ("hat", "x.x.x.x.x.x.x.x.", "hbgf"), ("hat", ".o.o.o.o.o.o.o.o", "f")),
    "breakbeat": (("kick", "x.........x.....", "gf"), ("kick", "x.......x.......", "b"),
                  ("snare", "....x.......x...", "gf"), ("hat", "x.x.x.x.x.x.x.x.", "hgf"),
                  ("ride", "x...x...x...x...", "b"), ("rim", "....x.......x...", "b"),
                  ("snare", ".......o.o....o.", "f")),
    "swing": (("ride", "x...x.x.x...x.x.", "hgf"), ("ride", "x...x...x...x...", "b"),
              ("pedal", "....x.......x...", "bgf"), ("kick", "o...o...o...o...", "f")),
    "shuffle": (("kick", "x.......x.......", "gf"), ("kick", "x...............", "b"),
                ("snare", "....x.......x...", "gf"), ("rim", "....x.......x...", "b"),
                ("hat", "x.x.x.x.x.x.x.x.", "hbg"), ("ride", "x.x.x.x.x.x.x.x.", "f")),
    "none": (),
}
DRUM_GAIN = {"kick": 0.55, "snare": 0.32, "clap": 0.3, "hat": 0.14, "open": 0.11, "shaker": 0.08,
             "crash": 0.12, "rim": 0.12, "pedal": 0.1, "ride": 0.13, "tom_hi": 0.3, "tom_mid": 0.32,
             "tom_lo": 0.36}
CYMBALS = ("hat", "open", "shaker", "ride")  # their off-beats are played softer than their beats
FILLS = (  # the last bar of a phrase: (step, sound, velocity); every line but the kick rests from the first
    tuple((s, "snare", 0.45 + 0.07 * (s - 8)) for s in range(8, 16)),
    ((8, "snare", 0.7), (10, "snare", 0.8), (12, "tom_hi", 0.9), (13, "tom_hi", 0.8), (14, "tom_mid", 0.9),
     (15, "tom_lo", 1.0)),
    ((8, "snare", 0.6), (9, "snare", 0.45), (10, "tom_hi", 0.8), (11, "tom_hi", 0.7), (12, "tom_mid", 0.9),
     (13, "tom_mid", 0.8), (14, "tom_lo", 1.0), (15, "tom_lo", 0.9)),
    ((10, "snare", 0.6), (12, "tom_hi", 0.8), (14, "tom_mid", 0.9), (15, "tom_lo", 1.0)),
)
TURNS = (  # the bar halfway through a phrase: a short figure on its last beat
    ((12, "snare", 0.5), (14, "snare", 0.7), (15, "snare", 0.8)),
    ((14, "tom_hi", 0.8), (15, "tom_lo", 0.9)),
    ((13, "snare", 0.4), (14, "snare", 0.6), (15, "tom_mid", 0.9)),
    ((14, "open", 1.0),),
)
COMP_STEPS = (2, 6, 7, 10, 14, 15)  # where a jazz drummer's left hand comments on the ride


def plays_kick(song: Song, level: str) -> bool:
    """Whether the family's kick plays at this level (the sidechain pumps only under a kick)."""
    return any(sound == "kick" and LEVEL_CODE[level] and LEVEL_CODE[level] in levels
               for sound, _, levels in DRUM_LINES[song.drums])


def drum_events(song: Song, bar: int, kind: str, a: Arrangement, bars_in: int, take: int | None = None
                ) -> list[Event]:
    """The bar's drums; `kind` is the kind that plays (a sectionless song's form already applied), `take`
    the seed of the bar's take."""
    code = LEVEL_CODE[a.drums]
    if song.drums == "none" or not code:
        return []
    rng = bar_rng(song, PART_DRUMS, bar, take=take)
    figure, cut = phrase_figure(song, rng, code, bars_in)
    hits = groove_hits(song, rng, code, a.busy, cut)
    to_end = song.phrase - bars_in % song.phrase  # bars left in the phrase, this one included
    if kind == "build" and code == "g" and to_end in (2, 3, 4):  # a snare build into the fill
        rate = 1 if to_end == 2 else 2
        hits += [(s, "snare", 0.3 + 0.03 * s) for s in range(0, STEPS, rate) if s < cut]
    hits += figure
    opens = code in "gf" if song.drums != "swing" else code == "f"  # a jazz drummer crashes only when loud
    if bars_in % song.phrase == 0 and (opens or bars_in == 0 and code == "b" and song.drums != "swing"):
        hits.append((0, "crash", 0.8 + 0.2 * float(rng.random())))
    base = bar * STEPS
    return [Event(base + step, "drums", sound, (), 0, DRUM_GAIN[sound] * vel) for step, sound, vel in hits]


def phrase_figure(song: Song, rng: np.random.Generator, code: str, bars_in: int
                  ) -> tuple[list[tuple[int, str, float]], int]:
    """The fill (last bar of a phrase) or turn (the bar halfway) and the step the groove stops at."""
    pos = bars_in % song.phrase
    if pos not in (song.phrase - 1, song.phrase // 2 - 1):
        return [], STEPS
    options = FILLS if pos == song.phrase - 1 and code != "h" else TURNS
    figure = options[int(rng.integers(len(options)))]
    soft = 0.6 if code == "h" or song.drums == "swing" else 1.0
    return [(s, sound, v * soft) for s, sound, v in figure], figure[0][0]


def groove_hits(song: Song, rng: np.random.Generator, code: str, busy: float, cut: int
                ) -> list[tuple[int, str, float]]:
    """The family's lines at this level, humanized velocities and the bar's own small changes."""
    hits = []
    for sound, pattern, levels in DRUM_LINES[song.drums]:
        if code not in levels:
            continue
        for step, hit in enumerate(pattern):
            if hit != "." and (step < cut or sound == "kick"):
                accent = (0.6 if song.swing else 0.8) if sound in CYMBALS and step % 4 else 1.0
                hits.append((step, sound, (1.0 if hit == "x" else 0.45) * accent * (0.85 + 0.15 * rng.random())))
    if code in "gf":
        hits = varied(song, rng, hits, busy, cut)
    return hits


def varied(song: Song, rng: np.random.Generator, hits: list[tuple[int, str, float]], busy: float, cut: int
           ) -> list[tuple[int, str, float]]:
    """Per-bar changes drawn from the bar's RNG: a dropped cymbal hit, ghost notes, an extra kick, jazz
    snare comping; so no bar of a phrase is a copy of the same bar of the last phrase."""
    draws = rng.random(3)
    picks = rng.integers(0, 64, 3)
    cymbal = [i for i, (s, sound, _) in enumerate(hits) if sound in CYMBALS and s % 4]
    if cymbal and draws[0] < 0.4:
        del hits[cymbal[picks[0] % len(cymbal)]]
    taken = {s for s, _, _ in hits}
    if song.drums == "swing":
        for s in sorted({COMP_STEPS[p % len(COMP_STEPS)] for p in picks[:1 + int(3 * busy * draws[1])]}):
            if s < cut:
                hits.append((s, "snare", 0.25 + 0.2 * float(draws[2])))
        return hits
    if song.drums in ("halftime", "breakbeat") and cut == STEPS and draws[0] > 1 - 0.4 * busy:
        start = 12 - 4 * (picks[0] % 2)  # a hat roll (32nds or triplets) through the third or fourth beat
        rate = (0.5, 2 / 3)[picks[1] % 2]
        hits = [h for h in hits if not (h[1] == "hat" and start <= h[0] < start + 4)]
        hits += [(start + k * rate, "hat", 0.5 + 0.1 * k * rate) for k in range(round(4 / rate))]
    if draws[1] < 0.7 * busy:
        s = (3, 7, 9, 15)[picks[1] % 4]
        if s < cut and s not in taken:
            hits.append((s, "snare", 0.3))
    if song.drums != "four" and draws[2] < 0.5 * busy:
        s = (3, 6, 11, 14)[picks[2] % 4]
        if s < cut and s not in taken:
            hits.append((s, "kick", 0.7))
    return hits
