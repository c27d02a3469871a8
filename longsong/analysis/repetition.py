"""Repetition: a new part stuck on one short stretch of itself (a loop), or replaying earlier material (a copy).

Both compare frames of the log-mel spectrogram after each band is standardised (z-scores over the compared
frames), so what counts is which notes and hits sound at a moment, not the song's average spectrum; frame
similarity is the cosine of those vectors, and a repetition is a diagonal of the similarity matrix that
stays high: mean similarity over a stretch of `span_s` seconds.
- loop: the new part against itself at lags of 0.4-4.5 s (a decoder repeating one or two beats or a bar),
  on the full 43 frames/s grid (a lag off the frame grid misaligns by at most half a 23 ms hop);
- copy: the new part against the song's earlier new parts, from the fingerprints kept in `Features`
  (mel frames pooled by 4: 10.8 frames/s, float16); the new part is pooled at all 4 phases and the best
  taken, so the copy's offset against the pooled grid costs nothing."""

from __future__ import annotations

import numpy as np

from longsong.analysis.prep import FPS

POOL = 4  # mel frames per fingerprint frame
LOOP_MIN_S, LOOP_MAX_S = 0.4, 4.5


def standardise(frames: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
    """(bands, frames) -> z-scored per band with the stats of `stats` (default: of `frames`), then each
    frame scaled to unit length; a frame with no deviation anywhere stays zero."""
    ref = frames if stats is None else stats
    z = (frames - ref.mean(axis=1, keepdims=True)) / (ref.std(axis=1, keepdims=True) + 1.0)
    return z / np.maximum(np.linalg.norm(z, axis=0, keepdims=True), 1e-6)


def pool(mel_db: np.ndarray, phase: int = 0) -> np.ndarray:
    """Mean of each run of POOL frames from `phase` on: (bands, frames // POOL)."""
    x = mel_db[:, phase:]
    n = x.shape[1] // POOL
    return x[:, : n * POOL].reshape(x.shape[0], n, POOL).mean(axis=2)


def fingerprint(mel_db: np.ndarray) -> np.ndarray:
    return pool(mel_db).astype(np.float16)


def best_run(diag: np.ndarray, span: int) -> tuple[float, int]:
    """(highest mean of `span` consecutive values, where it starts)."""
    if diag.size < span or span <= 0:
        return -1.0, 0
    c = np.concatenate(([0.0], np.cumsum(diag)))
    means = (c[span:] - c[:-span]) / span
    i = int(np.argmax(means))
    return float(means[i]), i


def loop_similarity(mel_db: np.ndarray, span_s: float) -> tuple[float, float, float]:
    """(similarity, lag s, start s) of the strongest loop: some stretch of min(span_s, what the part allows)
    that repeats itself at one lag."""
    z = standardise(mel_db)
    t = z.shape[1]
    found = []
    lo, hi = round(LOOP_MIN_S * FPS), round(LOOP_MAX_S * FPS)
    for lag in range(lo, min(hi, t // 2) + 1):
        diag = np.einsum("ij,ij->j", z[:, :-lag], z[:, lag:])
        span = min(round(span_s * FPS), t - lag)
        sim, start = best_run(diag, span)
        found.append((sim, lag / FPS, start / FPS))
    if not found:
        return -1.0, 0.0, 0.0
    top = max(f[0] for f in found)
    return next(f for f in found if f[0] >= top - 0.01)  # a loop repeats at 2x its lag too: name the shortest


def copy_similarity(mel_db: np.ndarray, history: list[np.ndarray], span_s: float) -> tuple[float, int, float]:
    """(similarity, history frame index, new-part start s) of the longest-held match of the new part
    against the concatenated fingerprints of earlier windows; similarity -1 without history."""
    if not history:
        return -1.0, 0, 0.0
    hist = np.concatenate([h.astype(np.float32) for h in history], axis=1)
    phases = [pool(mel_db, p) for p in range(POOL)]
    stats = np.concatenate([hist, phases[0]], axis=1)
    zh = standardise(hist, stats)
    fps = FPS / POOL
    best = (-1.0, 0, 0.0)
    for p, frames in enumerate(phases):
        zn = standardise(frames, stats)
        tn, th = zn.shape[1], zh.shape[1]
        span = min(round(span_s * fps), tn)
        if span < 2:
            continue
        sim = zn.T @ zh  # (tn, th)
        # skew: row i, offset o -> sim[i, i + o]; offsets -(tn - 1) .. th - 1
        offsets = np.arange(-(tn - 1), th)
        cols = np.arange(tn)[:, None] + offsets[None, :]
        valid = (cols >= 0) & (cols < th)
        diag = np.where(valid, sim[np.arange(tn)[:, None], np.clip(cols, 0, th - 1)], 0.0)
        c = np.concatenate((np.zeros((1, diag.shape[1])), np.cumsum(diag, axis=0)))
        cv = np.concatenate((np.zeros((1, diag.shape[1])), np.cumsum(valid, axis=0)))
        means = (c[span:] - c[:-span]) / span
        full = (cv[span:] - cv[:-span]) == span  # the stretch lies wholly inside the history
        means = np.where(full, means, -1.0)
        i, j = np.unravel_index(int(np.argmax(means)), means.shape)
        if means[i, j] > best[0]:
            best = (float(means[i, j]), int(i + offsets[j]), (i * POOL + p) / FPS)
    return best
