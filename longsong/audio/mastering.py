"""Whole-track mastering: fade-out, gain to the loudness target, true-peak limiting to the ceiling.

Loudness is what a listener hears on two speakers: a mono master is measured as dual mono (the same
channel fed to left and right, +3.01 dB over its one-channel BS.1770 reading; ffmpeg's
`ebur128=dualmono=true`, EBU Tech 3341's "dual mono" case), so at one target a mono and a stereo
master play equally loud. Limiting goes to the ceiling itself; the margin a lossy format needs is
added per format when it is encoded (`longsong.audio.delivery`).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from longsong.audio.limiter import limit_with_peak
from longsong.audio.loudness import SILENCE_LUFS, integrated_loudness
from longsong.audio.true_peak import true_peak_envelope

DUAL_MONO_DB = 10 * math.log10(2)  # one channel played on both speakers
FADE_FRACTION = 0.1  # a fade-out never takes more than this share of the track
LOUDNESS_TOLERANCE_LU = 0.05  # stop iterating gain once this close to target
MAX_PASSES = 12  # the gain search's bound; it converges in 1-5 on music
_MIN_SLOPE = 0.02  # LU per dB of gain below which the limiter has taken over: the target is out of reach


class SilentTrackError(ValueError):
    """The track is silent or near-silent; normalising it would apply an absurd gain."""


class GainLimitError(ValueError):
    """Reaching the loudness target needs more gain than the configured cap allows."""


@dataclass
class MasterReport:
    loudness_before_lufs: float  # after the fade-out, before gain and limiting
    loudness_lufs: float
    true_peak_dbtp: float
    gain_db: float  # static gain applied ahead of the limiter
    limiter_reduction_db: float  # the deepest gain reduction the limiter applied (>= 0)
    passes: int  # limiter passes the gain search took


def playback_loudness(audio: np.ndarray, sr: int) -> float:
    """BS.1770 integrated loudness as played on a stereo pair: mono counts as dual mono."""
    audio = np.atleast_2d(audio)
    return integrated_loudness(audio, sr) + (DUAL_MONO_DB if audio.shape[0] == 1 else 0.0)


def apply_fade_out(audio: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    """Raised-cosine fade to zero over the last `seconds` (flat start, no kink, ends at 0)."""
    out = np.array(audio, np.float32)
    n = min(out.shape[-1], round(seconds * sr))
    if n > 0:
        t = (np.arange(n) + 1) / n
        out[..., -n:] *= (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
    return out


def _next_gain(tried: list[tuple[float, float]], target: float, cap: float) -> float | None:
    """Secant step on loudness(gain) from the last two passes (unit slope after the first: gain
    the limiter does not touch adds loudness dB for dB); None once the curve has gone flat."""
    gain, loudness = tried[-1]
    slope = 1.0
    if len(tried) > 1 and tried[-2][0] != gain:
        slope = (loudness - tried[-2][1]) / (gain - tried[-2][0])
    if slope < _MIN_SLOPE:
        return None
    step = (target - loudness) / min(slope, 1.0)
    nxt = min(gain + step, cap)
    return None if nxt == gain else nxt


def master_track(audio: np.ndarray, sr: int, target_lufs: float = -14.0, ceiling_dbtp: float = -1.0,
                 fade_out_s: float = 3.0, max_gain_db: float = 30.0) -> tuple[np.ndarray, MasterReport]:
    """Fade out, then gain and limit to `target_lufs` under `ceiling_dbtp` (`fit_loudness`); a silent
    track, or one needing more than `max_gain_db` to reach the target, is refused."""
    duration = audio.shape[-1] / sr
    faded = apply_fade_out(audio, sr, min(fade_out_s, FADE_FRACTION * duration))
    with ThreadPoolExecutor(max_workers=1) as pool:  # the envelope's BLAS work overlaps pyloudnorm's
        envelope = pool.submit(true_peak_envelope, faded)
        before = playback_loudness(faded, sr)
        faded_env = envelope.result()
    if not before >= SILENCE_LUFS:
        raise SilentTrackError(f"track is silent or near-silent: integrated loudness {before:.1f} "
                               f"LUFS is below {SILENCE_LUFS:g} LUFS, nothing to master")
    if target_lufs - before > max_gain_db:
        raise GainLimitError(f"loudness_lufs: reaching {target_lufs:g} LUFS needs {target_lufs - before:+.1f} dB "
                             f"of gain on this track ({before:.1f} LUFS), over the cap of {max_gain_db:+g} dB "
                             f"(LONGSONG_MAX_GAIN_DB)")
    return fit_loudness(faded, sr, target_lufs, ceiling_dbtp, max_gain_db, before=before, env=faded_env)


def fit_loudness(audio: np.ndarray, sr: int, target_lufs: float, ceiling_dbtp: float, max_gain_db: float,
                 *, before: float | None = None, env: np.ndarray | None = None) -> tuple[np.ndarray, MasterReport]:
    """Search the gain that, after limiting to `ceiling_dbtp`, lands on `target_lufs` (limiting lowers
    the loudness, so each pass re-measures); where the target is out of reach under the ceiling, the
    closest pass wins. `before` and `env` are the input's loudness and true-peak envelope if known."""
    audio = np.asarray(audio, np.float32)
    before = playback_loudness(audio, sr) if before is None else before
    env = true_peak_envelope(audio) if env is None else env
    tried: list[tuple[float, float]] = []
    best: tuple[np.ndarray, float, float, float, float] | None = None  # audio, loudness, gain, reduction, peak
    gain_db: float | None = min(target_lufs - before, max_gain_db)
    while gain_db is not None and len(tried) < MAX_PASSES:
        gain = np.float32(10 ** (gain_db / 20))  # the envelope of a scaled signal is the scaled envelope
        out, reduction, peak = limit_with_peak(audio * gain, sr, ceiling_dbtp, env=env * gain)
        # untouched by the limiter, loudness just follows the gain (the gates scale with it)
        loudness = playback_loudness(out, sr) if reduction > 0 else before + gain_db
        tried.append((gain_db, loudness))
        if best is None or abs(loudness - target_lufs) < abs(best[1] - target_lufs):
            best = out, loudness, gain_db, reduction, peak
        if abs(loudness - target_lufs) <= LOUDNESS_TOLERANCE_LU:
            break
        gain_db = _next_gain(tried, target_lufs, max_gain_db)
    out, loudness, gain_db, reduction, peak = best
    return out, MasterReport(before, loudness, peak, gain_db, reduction, len(tried))
