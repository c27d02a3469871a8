"""Preview image of a finished song: waveform envelope over a spectrogram strip, seams marked.

Everything is reduced to one value per pixel column before plotting (min/max envelope, one
FFT frame per column), so a 4-minute track renders in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longsong.atomic import replacing

WIDTH_PX, HEIGHT_PX, DPI = 1400, 520, 100
N_FFT = 2048
SPEC_ROWS = 160  # log-spaced frequency rows
F_MIN = 40.0
DB_RANGE = 80.0


def _envelope(mid: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column min, max and RMS of the signal (columns <= samples)."""
    edges = np.linspace(0, mid.size, columns + 1).astype(int)
    lo = np.minimum.reduceat(mid, edges[:-1])
    hi = np.maximum.reduceat(mid, edges[:-1])
    rms = np.sqrt(np.add.reduceat(np.square(mid), edges[:-1], dtype=np.float64) / np.diff(edges))
    return lo, hi, rms


def _log_spectrogram(mid: np.ndarray, sr: int, columns: int) -> np.ndarray:
    """dB power (SPEC_ROWS, columns) on a log frequency axis from F_MIN to Nyquist, one
    frame per column (a coarse hop keeps it cheap)."""
    padded = np.pad(mid, (N_FFT // 2, N_FFT // 2))
    starts = np.linspace(0, padded.size - N_FFT, columns).astype(int)
    frames = padded[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    bins = np.geomspace(F_MIN, sr / 2, SPEC_ROWS) * N_FFT / sr
    low = np.minimum(bins.astype(int), power.shape[1] - 2)
    frac = bins - low
    rows = power[:, low] * (1 - frac) + power[:, low + 1] * frac
    db = 10 * np.log10(np.maximum(rows, 1e-12 * max(float(rows.max()), 1e-20)))
    return np.maximum(db - db.max(), -DB_RANGE).T


def _mmss(seconds: float, _pos: object = None) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _tick_step(duration: float) -> float:
    """A round tick spacing giving at most ~12 labels."""
    return next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300) if duration / s <= 12), 600)


def render_waveform(audio: np.ndarray, sr: int, path: str | Path, seams_s: list[float], title: str) -> None:
    """Write a PNG of the mid signal's waveform and spectrogram with segment seams as lines."""
    from matplotlib.figure import Figure  # Figure without pyplot: no global state, no display
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    mid = np.atleast_2d(np.asarray(audio, dtype=np.float32)).mean(axis=0)
    if mid.size == 0:
        raise ValueError("cannot render an empty signal")
    duration = mid.size / sr
    columns = min(WIDTH_PX, mid.size)
    times = (np.arange(columns) + 0.5) * duration / columns
    lo, hi, rms = _envelope(mid, columns)

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    wave_ax, spec_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    wave_ax.fill_between(times, lo, hi, color="#7aa6d6", linewidth=0)
    wave_ax.fill_between(times, -rms, rms, color="#2f5f98", linewidth=0)
    wave_ax.set_ylim(-1.05, 1.05)
    wave_ax.set_yticks([-1, 0, 1])
    wave_ax.set_title(title, loc="left")

    spec_ax.imshow(_log_spectrogram(mid, sr, columns), origin="lower", aspect="auto",
                   extent=(0.0, duration, 0.0, 1.0), cmap="magma", interpolation="nearest")
    ticks = [f for f in (100, 1000, 10000) if F_MIN < f < sr / 2]
    spec_ax.set_yticks([np.log(f / F_MIN) / np.log(sr / 2 / F_MIN) for f in ticks],
                       [f"{f // 1000}k" if f >= 1000 else str(f) for f in ticks])
    spec_ax.set_ylabel("Hz")
    spec_ax.set_xlim(0.0, duration)
    spec_ax.xaxis.set_major_locator(MultipleLocator(_tick_step(duration)))
    spec_ax.xaxis.set_major_formatter(FuncFormatter(_mmss))
    for seam in seams_s:
        wave_ax.axvline(seam, color="#e0413a", linewidth=1.0, linestyle="--")
        spec_ax.axvline(seam, color="white", linewidth=1.0, linestyle="--")
    fig.subplots_adjust(left=0.04, right=0.995, top=0.93, bottom=0.07, hspace=0.05)

    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})  # zlib level 6 costs 0.1 s
