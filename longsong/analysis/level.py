"""Loudness over time (BS.1770 K-weighting, as longsong/audio/loudness.py and pyloudnorm use) and silence.

Short-term loudness is the 3 s window of EBU R 128 (here every 0.5 s), momentary the 400 ms window (every
0.1 s); both from one K-weighted pass per channel and a cumulative sum of the channel-weighted energy."""

from __future__ import annotations

import math

import numpy as np

from longsong.audio.loudness import k_weighting

SHORT_S, SHORT_HOP_S = 3.0, 0.5
MOMENTARY_S, MOMENTARY_HOP_S = 0.4, 0.1
FLOOR_LUFS = -120.0  # digital silence reads as this instead of -inf


def weighted_energy(audio: np.ndarray, sr: int) -> np.ndarray:
    """Per-sample K-weighted energy summed over channels (BS.1770 gains 1.0 for L and R)."""
    total = np.zeros(audio.shape[1])
    for channel in audio:
        x = np.asarray(channel, dtype=np.float64)
        for stage in k_weighting(sr):
            x = stage.apply_filter(x)
        total += x * x
    return total


def windowed(energy: np.ndarray, sr: int, window_s: float, hop_s: float) -> np.ndarray:
    """Loudness (LUFS) of each window; a part shorter than one window gives one value over all of it."""
    n, w, h = energy.size, round(window_s * sr), round(hop_s * sr)
    if n == 0:
        return np.array([FLOOR_LUFS])
    cum = np.concatenate(([0.0], np.cumsum(energy)))
    starts = np.arange(0, max(n - w, 0) + 1, h) if n >= w else np.array([0])
    ends = np.minimum(starts + w, n)
    mean = (cum[ends] - cum[starts]) / (ends - starts)
    with np.errstate(divide="ignore"):
        return np.maximum(-0.691 + 10 * np.log10(mean), FLOOR_LUFS)


def loudness_curves(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(short-term every 0.5 s, momentary every 0.1 s), LUFS."""
    e = weighted_energy(audio, sr)
    return windowed(e, sr, SHORT_S, SHORT_HOP_S), windowed(e, sr, MOMENTARY_S, MOMENTARY_HOP_S)


def silent_runs(momentary: np.ndarray, silence_lufs: float) -> tuple[float, float, float]:
    """(longest silent gap with sound after it, trailing silence, its start), seconds, from the momentary
    loudness: a run of n quiet blocks lasts (n - 1) hops + one block."""
    quiet = momentary < silence_lufs
    longest_inner, start_inner = 0.0, math.nan
    run_start = None
    for i, q in enumerate(np.append(quiet, False)):
        if q and run_start is None:
            run_start = i
        elif not q and run_start is not None:
            length = (i - run_start - 1) * MOMENTARY_HOP_S + MOMENTARY_S
            if i < quiet.size and length > longest_inner:
                longest_inner, start_inner = length, run_start * MOMENTARY_HOP_S
            run_start = None
    tail = 0
    while tail < quiet.size and quiet[quiet.size - 1 - tail]:
        tail += 1
    trailing = (tail - 1) * MOMENTARY_HOP_S + MOMENTARY_S if tail else 0.0
    return longest_inner, trailing, start_inner
