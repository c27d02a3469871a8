"""BS.1770-4 integrated loudness, pyloudnorm's meter with its gating vectorised.

pyloudnorm sums each 400 ms block in a Python loop (0.3 s of a 4-minute track, paid twice when
the limiter works); here the same filters, block bounds and gates are computed with numpy, and
tests hold the result to pyloudnorm's own `integrated_loudness` within 1e-6 LU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyloudnorm

SILENCE_LUFS = -70.0  # BS.1770's absolute gate: below it there is nothing to normalise
_CHANNEL_GAINS = (1.0, 1.0, 1.0, 1.41, 1.41)  # BS.1770 G_i for L, R, C, Ls, Rs (pyloudnorm's)


def k_weighting(sr: int) -> list[pyloudnorm.IIRfilter]:
    """BS.1770's K-weighting at `sr`: pyloudnorm's public IIRfilter with the constants its Meter uses
    for "K-weighting" (a test checks the result against the Meter's)."""
    return [pyloudnorm.IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sr, "high_shelf"),
            pyloudnorm.IIRfilter(0.0, 0.5, 38.0, sr, "high_pass")]


def integrated_loudness(audio: np.ndarray, sr: int) -> float:
    """BS.1770-4 gated integrated loudness in LUFS of (channels, samples) audio; -inf for silence.

    pyloudnorm.Meter's algorithm step for step (same filters, block bounds, gates), with each
    channel filtered in its own thread (scipy's lfilter releases the GIL) and the overlapping
    blocks' energies summed from the pieces between block edges instead of a Python loop."""
    audio = np.atleast_2d(audio)
    meter = pyloudnorm.Meter(sr)
    pyloudnorm.util.valid_audio(audio.T, sr, meter.block_size)
    stages = k_weighting(sr)

    block, step = meter.block_size, 1.0 - meter.overlap
    n_blocks = int(np.round((audio.shape[1] / sr - block) / (block * step))) + 1
    j = np.arange(n_blocks)
    lower = (block * (j * step) * sr).astype(np.int64)  # the same float expressions as pyloudnorm's
    upper = np.minimum((block * (j * step + 1) * sr).astype(np.int64), audio.shape[1])
    edges = np.unique(np.concatenate((lower, upper)))  # blocks overlap: sum each piece between edges once

    def piece_energy(channel: np.ndarray) -> np.ndarray:
        x = np.asarray(channel[: edges[-1]], dtype=np.float64)
        for stage in stages:
            x = stage.apply_filter(x)
        return np.add.reduceat(np.square(x, out=x), edges[:-1])

    with ThreadPoolExecutor(max_workers=min(2, audio.shape[0])) as pool:
        pieces = np.stack(list(pool.map(piece_energy, audio)))
    cumulative = np.concatenate((np.zeros((pieces.shape[0], 1)), np.cumsum(pieces, axis=1)), axis=1)
    lo, hi = np.searchsorted(edges, lower), np.searchsorted(edges, upper)
    z = (cumulative[:, hi] - cumulative[:, lo]) / (block * sr)  # mean square per channel and block
    gains = np.array(_CHANNEL_GAINS[: audio.shape[0]])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        block_lufs = -0.691 + 10 * np.log10((gains * z).sum(axis=0))
        above = block_lufs >= SILENCE_LUFS
        relative = -0.691 + 10 * np.log10((gains[:, 0] * z[:, above].sum(axis=1) / above.sum()).sum()) - 10
        gated = (block_lufs > relative) & (block_lufs > SILENCE_LUFS)
        energy = np.nan_to_num(z[:, gated].sum(axis=1) / gated.sum())  # no block passes: silence
        return float(-0.691 + 10 * np.log10((gains[:, 0] * energy).sum()))


