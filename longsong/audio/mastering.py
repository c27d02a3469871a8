"""Whole-track mastering: fade-out, gain to the loudness target, true-peak limiting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from longsong.audio.limiter import limit_with_peak
from longsong.audio.loudness import SILENCE_LUFS, integrated_loudness
from longsong.audio.true_peak import true_peak_envelope

# Lossy encoders overshoot the true peak on decode (EBU Tech 3344 advises -2 dBTP before them).
# Measured here, MP3 320k (libmp3lame) at 32 kHz stereo, limited material: procedural-engine
# songs +0.05..0.35 dB, music-like test signals up to +0.44 dB, but crushed material with flat
# noise up to 16 kHz up to +1.3 dB (LAME's ~15 kHz low-pass reshapes the limited peaks).
DEFAULT_MARGIN_DB = 1.0
FADE_FRACTION = 0.1  # a fade-out never takes more than this share of the track
LOUDNESS_TOLERANCE_LU = 0.1  # stop iterating gain once this close to target
MAX_PASSES = 4


class SilentTrackError(ValueError):
    """The track is silent or near-silent; normalising it would apply an absurd gain."""


@dataclass
class MasterReport:
    loudness_before_lufs: float  # after the fade-out, before gain and limiting
    loudness_lufs: float
    true_peak_dbtp: float
    gain_db: float  # static gain applied ahead of the limiter
    limiter_reduction_db: float  # the deepest gain reduction the limiter applied (>= 0)


def apply_fade_out(audio: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    """Raised-cosine fade to zero over the last `seconds` (flat start, no kink, ends at 0)."""
    out = np.array(audio, np.float32)
    n = min(out.shape[-1], round(seconds * sr))
    if n > 0:
        t = (np.arange(n) + 1) / n
        out[..., -n:] *= (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
    return out


def master_track(audio: np.ndarray, sr: int, target_lufs: float = -14.0, ceiling_dbtp: float = -1.0,
           fade_out_s: float = 3.0, margin_db: float = DEFAULT_MARGIN_DB
           ) -> tuple[np.ndarray, MasterReport]:
    """Fade out, gain to `target_lufs`, limit to `ceiling_dbtp - margin_db` (headroom for the
    lossy encoders' decode overshoot), re-measure and correct the gain, since limiting lowers
    the loudness. Where the target is out of reach under the ceiling, the closest pass wins."""
    duration = audio.shape[-1] / sr
    faded = apply_fade_out(audio, sr, min(fade_out_s, FADE_FRACTION * duration))
    with ThreadPoolExecutor(max_workers=1) as pool:  # the envelope's BLAS work overlaps pyloudnorm's
        envelope = pool.submit(true_peak_envelope, faded)
        before = integrated_loudness(faded, sr)
        faded_env = envelope.result()
    if not before >= SILENCE_LUFS:
        raise SilentTrackError(f"track is silent or near-silent: integrated loudness {before:.1f} "
                               f"LUFS is below {SILENCE_LUFS:g} LUFS, nothing to master")
    gain_db = target_lufs - before
    best: tuple[np.ndarray, float, float, float, float] | None = None  # audio, loudness, gain, reduction, peak
    for _ in range(MAX_PASSES):
        gain = np.float32(10 ** (gain_db / 20))  # the envelope of a scaled signal is the scaled envelope
        out, reduction, peak = limit_with_peak(faded * gain, sr, ceiling_dbtp - margin_db, env=faded_env * gain)
        # untouched by the limiter, loudness just follows the gain (the gates scale with it)
        loudness = integrated_loudness(out, sr) if reduction > 0 else before + gain_db
        if best is None or abs(loudness - target_lufs) < abs(best[1] - target_lufs):
            best = out, loudness, gain_db, reduction, peak
        if abs(loudness - target_lufs) <= LOUDNESS_TOLERANCE_LU:
            break
        gain_db += target_lufs - loudness
    out, loudness, gain_db, reduction, peak = best
    return out, MasterReport(before, loudness, peak, gain_db, reduction)
