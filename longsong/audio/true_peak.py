"""True peak (BS.1770-4 Annex 2 style, 4x oversampling).

pyloudnorm has no true-peak meter (its peak normalisation uses sample peak), so this one is
ours: a windowed-sinc polyphase interpolator run as one matrix product per block of samples,
which keeps a 240 s stereo track at ~0.1-0.2 s on two CPU cores.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided
from threadpoolctl import threadpool_limits

OVERSAMPLE = 4
HALF_TAPS = 16  # input samples each side of an interpolated point
_KAISER_BETA = 5.0  # with 16 half-taps: flat within 0.03 dB up to 0.45 fs
_BLOCK = 32  # input samples per matrix row
_ROWS_PER_CHUNK = 4096  # bounds the temporary oversampled block to ~1.5 MB


@functools.lru_cache(maxsize=1)
def _interpolator() -> np.ndarray:
    """Matrix mapping a row of _BLOCK + 2*HALF_TAPS - 1 input samples to the 3 intermediate
    phases (n + 1/4, n + 2/4, n + 3/4) of its _BLOCK samples, laid out phase-major so the
    max over phases is a max of three contiguous slices. Phase 0 is the sample itself."""
    k = HALF_TAPS
    offsets = np.arange(-k + 1, k + 1)  # input sample n + j contributes to points in [n, n+1)
    matrix = np.zeros((_BLOCK + 2 * k - 1, OVERSAMPLE - 1, _BLOCK))
    for q in range(1, OVERSAMPLE):
        t = offsets - q / OVERSAMPLE
        taps = np.sinc(t) * np.i0(_KAISER_BETA * np.sqrt(1 - (t / k) ** 2)) / np.i0(_KAISER_BETA)
        taps /= taps.sum()  # exact unity gain at DC
        for p in range(_BLOCK):
            matrix[p:p + 2 * k, q - 1, p] = taps
    return matrix.reshape(_BLOCK + 2 * k - 1, (OVERSAMPLE - 1) * _BLOCK).astype(np.float32)


def _channel_envelope(x: np.ndarray) -> np.ndarray:
    """Per sample n: the largest |value| of the 4x-oversampled channel within [n, n+1)."""
    k, n = HALF_TAPS, x.shape[0]
    rows = -(-n // _BLOCK)
    padded = np.zeros(rows * _BLOCK + 2 * k - 1, np.float32)
    padded[k - 1:k - 1 + n] = x
    frames = as_strided(padded, (rows, _BLOCK + 2 * k - 1), (_BLOCK * padded.itemsize, padded.itemsize))
    matrix = _interpolator()
    out = np.empty((rows, _BLOCK), np.float32)
    for r in range(0, rows, _ROWS_PER_CHUNK):
        phases = np.abs(np.ascontiguousarray(frames[r:r + _ROWS_PER_CHUNK]) @ matrix)
        phases = phases.reshape(-1, OVERSAMPLE - 1, _BLOCK)
        np.maximum(phases[:, 0], phases[:, 1], out=out[r:r + _ROWS_PER_CHUNK])
        for q in range(2, OVERSAMPLE - 1):
            np.maximum(out[r:r + _ROWS_PER_CHUNK], phases[:, q], out=out[r:r + _ROWS_PER_CHUNK])
    return np.maximum(out.ravel()[:n], np.abs(x))


def true_peak_envelope(audio: np.ndarray) -> np.ndarray:
    """Per sample: the 4x-oversampled peak over all channels, shape (samples,).

    BLAS runs single-threaded here: these small products lose to thread hand-offs, badly so
    on shared cores (measured 0.17 s vs 0.7-2 s for 240 s stereo on two busy cores)."""
    audio = np.asarray(audio, np.float32)
    with threadpool_limits(1, user_api="blas"):
        env = _channel_envelope(audio[0])
        for ch in audio[1:]:
            np.maximum(env, _channel_envelope(ch), out=env)
    return env


def true_peak_dbtp(audio: np.ndarray, sr: int) -> float:
    """True peak in dBTP (4x oversampling; -inf for silence). `sr` is accepted for symmetry
    with `integrated_loudness`: the interpolation works in samples, whatever the rate."""
    peak = float(true_peak_envelope(audio).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else float("-inf")
