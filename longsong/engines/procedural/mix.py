"""Rendering a window: notes placed on the drum, bass and keys buses, sidechain, reverb, soft clip, fade."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from longsong.engines.base import StepCallback
from longsong.engines.procedural.drums import plays_kick
from longsong.engines.procedural.harmony import arrangement_at, section_of_bar
from longsong.engines.procedural.patterns import bar_events
from longsong.engines.procedural.song import SR, Song
from longsong.engines.procedural.synth import (
    MAX_TAIL_S,
    REVERB_DECIMATION,
    REVERB_PAD,
    drum_kit,
    render_note,
    reverb,
    seconds,
    toms,
)

MIX_GAIN = 0.8  # bus sum -> soft-clip input: the loudest grooves reach about 0 dBFS there
MIX_GAIN_NO_DRUMS = 1.2  # without drum transients the same peaks leave room for more level
CEILING = 0.66  # soft-clip ceiling: peaks stay below -3.6 dBFS
FADE_S = 2.0
ROLE_BUS = {"drums": 0, "bass": 1, "pad": 2, "lead": 2, "arp": 2}
REVERB_SEND_DRUMS, REVERB_SEND_KEYS = 0.08, 0.45


@lru_cache(maxsize=8)
def duck_curve(length: int) -> np.ndarray:
    x = seconds(length)
    return 1 - 0.3 * (1 - np.exp(-x / 0.004)) * np.exp(-x / 0.12)


def kick_bar(song: Song, sections: tuple[tuple[int, str], ...], bar: int, final: int | None) -> bool:
    if bar < 0 or (final is not None and bar >= final):
        return False
    kind, since = section_of_bar(sections, bar)
    return plays_kick(song, arrangement_at(song, kind, bar - since).drums)


def sidechain(song: Song, sections: tuple[tuple[int, str], ...], final: int | None, start: int,
              n: int) -> np.ndarray | float:
    """Four-on-the-floor pumping: the music ducks after each beat of the bars where the kick plays."""
    if song.drums != "four":
        return 1.0
    beat = song.bar_samples / 4
    curve = duck_curve(math.ceil(beat) + 1)
    gain = np.ones(n, np.float32)
    for k in range(math.floor(start / beat), math.floor((start + n - 1) / beat) + 1):
        if kick_bar(song, sections, k // 4, final):
            a, b = round(k * beat), round((k + 1) * beat)
            lo, hi = max(a, start), min(b, start + n)
            gain[lo - start:hi - start] = curve[lo - a:hi - a]
    return gain


def place(bus: np.ndarray, lo: int, start: int, note: np.ndarray, gain: float) -> None:
    """Add the part of a note that falls inside the bus (which begins at absolute sample lo)."""
    a, b = max(start, lo), min(start + note.shape[1], lo + bus.shape[1])
    if a < b:
        bus[:, a - lo:b - lo] += gain * note[:, a - start:b - start]


def onset(song: Song, step: float) -> int:
    return round(song.swung(step) * song.step_samples)


def render(song: Song, sections: tuple[tuple[int, str], ...], final: int | None, start: int, n: int,
           on_step: StepCallback, takes: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """Samples [start, start + n) of the song, float32 stereo; `takes` the (first bar, seed) timeline."""
    lo, hi = start - REVERB_PAD, start + n + REVERB_DECIMATION
    end = start + n
    first = max(0, math.floor((lo - MAX_TAIL_S * SR) / song.bar_samples) - song.bars_per_chord)
    first = min(first, final) if final is not None else first
    bars = range(first, math.floor((hi - 1) / song.bar_samples) + 1)
    buses = np.zeros((3, 2, hi - lo), np.float32)
    kit, notes = drum_kit() | toms(song.tonic), {}
    for i, bar in enumerate(bars):
        for ev in bar_events(song, sections, bar, final, end, takes):
            if ev.role == "drums":
                sound = kit[ev.sound]
            else:
                key = (ev.role, ev.sound, ev.pitches, ev.gate)
                if key not in notes:
                    notes[key] = render_note(*key)
                sound = notes[key]
            place(buses[ROLE_BUS[ev.role]], lo, onset(song, ev.step), sound, ev.gain)
        on_step(i + 1, len(bars) + 1)
    mix = mix_down(song, sections, buses, start, start - lo, n, final)
    on_step(len(bars) + 1, len(bars) + 1)
    return mix


def mix_down(song: Song, sections: tuple[tuple[int, str], ...], buses: np.ndarray, start: int, offset: int,
             n: int, final: int | None) -> np.ndarray:
    """Sidechain, reverb and soft clip of song samples [start, start + n) (bus positions from
    `offset`), and the fade of a final cadence."""
    drums, bass, keys = buses
    wet = reverb(REVERB_SEND_DRUMS * drums + REVERB_SEND_KEYS * keys, offset // REVERB_DECIMATION,
                 n // REVERB_DECIMATION)
    music = bass[:, offset:offset + n] + keys[:, offset:offset + n]
    music *= sidechain(song, sections, final, start, n)
    gain = MIX_GAIN_NO_DRUMS if song.drums == "none" else MIX_GAIN
    out = CEILING * np.tanh((drums[:, offset:offset + n] + music + wet) * (gain / CEILING))
    if final is not None:
        out *= final_fade(song, final, start, n)
    return out


def final_fade(song: Song, final: int, start: int, n: int) -> np.ndarray:
    """Raised-cosine fade to silence over the last FADE_S of the window (at most the cadence)."""
    end = start + n
    fade = min(int(FADE_S * SR), end - round(final * song.bar_samples))
    x = np.arange(start, end) - (end - fade)
    return (0.5 * (1 + np.cos(np.pi * np.clip(x / fade, 0, 1)))).astype(np.float32)
