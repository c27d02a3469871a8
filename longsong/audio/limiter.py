"""Lookahead true-peak limiter: the gain curve worked out per block from the true-peak envelope."""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import grey_closing, maximum_filter1d

from longsong.audio.true_peak import HALF_TAPS, true_peak_dbtp, true_peak_envelope

_CONTROL_STEP = 8  # samples per limiter gain-control block (even)
LOOKAHEAD_MS = 3.0
# Dips in the needed reduction between peaks closer than this are filled (a morphological closing):
# longer than the gap between the peaks of a 20 Hz wave (25 ms), so a steady bass note sees a steady
# gain rather than one riding its cycle (that ripple is distortion: a 40 Hz sine driven 6 dB over read
# -40 dB THD+N without it). An isolated peak is not widened, so drum hits cost no extra loudness.
HOLD_MS = 30.0
RELEASE_MS = 50.0
_FLOAT_HAIR_DB = 0.001  # the limiter aims this far under its ceiling: float32 rounding is ~1e-6 dB


def _sliding_max(x: np.ndarray, behind: int, ahead: int) -> np.ndarray:
    """max(x[n - behind : n + ahead + 1]), zero outside the signal."""
    size = behind + ahead + 1
    return maximum_filter1d(x, size, mode="constant", cval=0.0, origin=behind - size // 2)


def _causal_mean(x: np.ndarray, length: int) -> np.ndarray:
    """mean(x[n - length + 1 : n + 1]), the first value repeated before the start."""
    c = np.cumsum(np.pad(x, (length, 0), mode="edge"))
    return (c[length:] - c[:-length]) / length


def _release(reduction_db: np.ndarray, release_samples: float) -> np.ndarray:
    """Instant attack, exponential release: max over k <= n of r[k] * exp(-(n - k) / tau),
    computed exactly as a running max in the log domain (no per-sample Python loop)."""
    ramp = np.arange(reduction_db.shape[0]) / release_samples
    with np.errstate(divide="ignore"):
        log_r = np.log(reduction_db)
    return np.exp(np.maximum.accumulate(log_r + ramp) - ramp)


def _gain_curve(env: np.ndarray, sr: int, ceiling_dbtp: float, lookahead_ms: float,
                release_ms: float, hold_ms: float) -> np.ndarray | None:
    """Per-sample limiter gain from the true-peak envelope, or None if nothing is over.

    Worked out per block of _CONTROL_STEP samples (the gain needs no finer time grid, and the
    log/exp work shrinks 8x): the reduction in dB each block needs is held across the lookahead
    and the interpolator's reach (plus one block, since the gain is interpolated between block
    centres), released exponentially, then smoothed by two causal moving averages that together
    span the lookahead. So the gain ramps down smoothly and is at or below what every peak needs
    over all the samples that peak's interpolation reads."""
    n = env.shape[0]
    blocks = -(-n // _CONTROL_STEP)
    peaks = np.zeros(blocks * _CONTROL_STEP, np.float32)
    peaks[:n] = env
    block_peaks = peaks.reshape(blocks, _CONTROL_STEP).max(axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        need = np.maximum(20 * np.log10(block_peaks) - ceiling_dbtp, 0.0)
    if not need.any():
        return None
    reach = -(-HALF_TAPS // _CONTROL_STEP) + 1
    lookahead = max(2, math.ceil(lookahead_ms * sr / 1000 / _CONTROL_STEP))
    if hold_ms > 0:  # fill the dips between peaks closer than hold_ms; an isolated peak is not widened
        need = grey_closing(need, size=math.ceil(hold_ms * sr / 1000 / _CONTROL_STEP) + 1, mode="nearest")
    held = _sliding_max(need, reach, lookahead - 1 + reach)
    released = _release(held, release_ms * sr / 1000 / _CONTROL_STEP)
    first = (lookahead + 1) // 2
    reduction = _causal_mean(_causal_mean(released, first), lookahead + 1 - first)
    return _between_centres(10 ** (-reduction / 20), _CONTROL_STEP)[:n].astype(np.float32)


def _between_centres(values: np.ndarray, step: int) -> np.ndarray:
    """Per-block values to per-sample, linear between block centres (as np.interp, ~8x faster);
    `step` is even, so each sample sits half a sample off a centre."""
    w = (np.arange(step) + 0.5) / step
    ramps = values[:-1, None] * (1 - w) + values[1:, None] * w
    return np.concatenate([np.full(step // 2, values[0]), ramps.ravel(), np.full(step // 2, values[-1])])


def limit_true_peak(audio: np.ndarray, sr: int, ceiling_dbtp: float, lookahead_ms: float = LOOKAHEAD_MS,
                    release_ms: float = RELEASE_MS, hold_ms: float = HOLD_MS) -> tuple[np.ndarray, float]:
    """Lookahead true-peak limiter; returns (audio, deepest reduction in dB). The output's true
    peak is at most the ceiling; audio already under it comes back unchanged."""
    out, reduction, _ = limit_with_peak(audio, sr, ceiling_dbtp, lookahead_ms, release_ms, hold_ms)
    return out, reduction


def limit_with_peak(audio: np.ndarray, sr: int, ceiling_dbtp: float, lookahead_ms: float = LOOKAHEAD_MS,
                    release_ms: float = RELEASE_MS, hold_ms: float = HOLD_MS, env: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float, float]:
    """limit_true_peak, also returning the output's true peak (dBTP) without measuring twice;
    `env` is the input's true-peak envelope when the caller already has it."""
    ceiling_dbtp -= _FLOAT_HAIR_DB
    audio = np.asarray(audio, np.float32)
    env = true_peak_envelope(audio) if env is None else env
    gain = _gain_curve(env, sr, ceiling_dbtp, lookahead_ms, release_ms, hold_ms)
    if gain is None:
        peak = float(env.max(initial=0.0))
        return audio.copy(), 0.0, 20 * math.log10(peak) if peak > 0 else float("-inf")
    out = audio * gain
    peak_db = true_peak_dbtp(out, sr)
    excess = peak_db - ceiling_dbtp
    if excess > 0:  # safety net: a moving gain's interpolation could leave a hair over
        out *= np.float32(10 ** (-excess / 20))
        peak_db -= excess
    return out, -20 * math.log10(float(gain.min())) + max(excess, 0.0), peak_db
