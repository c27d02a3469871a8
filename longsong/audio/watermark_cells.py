"""The watermark's time-frequency cells: STFT (sqrt-Hann, 75 % overlap) of the channel mean, energies in 16
log-spaced bands of 250..4000 Hz, and the dB of 128 ms cells of them, at any frame offset and optionally on a
time and frequency grid scaled for a speed change. The embedder and the detector of `watermark` share these."""

from __future__ import annotations

import numpy as np
from scipy import fft

RATE = 32000  # analysis rate; other rates are resampled
N_FFT, HOP = 2048, 512
F_LO, F_HI, N_BANDS = 250.0, 4000.0, 16
CELL = 8  # frames per cell (128 ms)
FLOOR = 1e-3  # energy floor relative to the mean cell: silence does not swing the dB
EDGES = F_LO * (F_HI / F_LO) ** (np.arange(N_BANDS + 1) / N_BANDS) / (RATE / N_FFT)  # in bins
WINDOW = np.sin(np.pi * (np.arange(N_FFT) + 0.5) / N_FFT).astype(np.float32)


def stft(audio: np.ndarray) -> np.ndarray:
    """(channels, frames, bins), frame t centred on sample t * HOP."""
    n = audio.shape[1]
    padded = np.pad(audio, ((0, 0), (N_FFT // 2, N_FFT // 2 + (-n) % HOP)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[:, ::HOP] * WINDOW
    return fft.rfft(frames, axis=-1)


def istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of `stft` (sqrt-Hann both ways, normalised by the window sum)."""
    frames = fft.irfft(spec, n=N_FFT, axis=-1).astype(np.float32) * WINDOW
    channels, t, _ = frames.shape
    out = np.zeros((channels, (t + 3) * HOP), np.float32)
    norm = np.zeros((t + 3) * HOP, np.float32)
    for k in range(N_FFT // HOP):
        out[:, k * HOP : (k + t) * HOP] += frames[:, :, k * HOP : (k + 1) * HOP].reshape(channels, -1)
        norm[k * HOP : (k + t) * HOP] += np.tile(WINDOW[k * HOP : (k + 1) * HOP] ** 2, t)
    return (out / np.maximum(norm, 1e-3))[:, N_FFT // 2 : N_FFT // 2 + n]


def mid_power(audio: np.ndarray) -> np.ndarray:
    """STFT power of the channel mean: what a downmix keeps."""
    spec = stft(audio.mean(axis=0, keepdims=True))[0]
    return spec.real**2 + spec.imag**2


def band_frames(power: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(frames, N_BANDS) band energies, band edges scaled by `scale` (fractional bins, linear)."""
    cum = np.concatenate([np.zeros((len(power), 1)), np.cumsum(power, axis=1)], axis=1)
    edges = EDGES * scale
    lo = np.floor(edges).astype(np.int64)
    w = edges - lo
    return np.diff(cum[:, lo] * (1 - w) + cum[:, lo + 1] * w, axis=1)


def cell_db(bands: np.ndarray, stretch: float = 1.0) -> np.ndarray:
    """dB of the cell starting at every nominal frame n (read at frame n * stretch, CELL * stretch long)."""
    cum = np.concatenate([np.zeros((1, N_BANDS)), np.cumsum(bands, axis=0)])
    n = int((len(bands) - CELL * stretch) / stretch)
    if n <= 0:
        return np.zeros((0, N_BANDS))

    def at(y: np.ndarray) -> np.ndarray:
        i = np.minimum(y.astype(np.int64), len(cum) - 2)
        w = (y - i)[:, None]
        return cum[i] * (1 - w) + cum[i + 1] * w

    y = np.arange(n) * stretch
    e = at(y + CELL * stretch) - at(y)
    return 10 * np.log10(e + FLOOR * float(e.mean()) + 1e-30)
