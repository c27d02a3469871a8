"""Key from chroma: the mean chroma of a part correlated with the 24 rotations of a major/minor key profile.

Chroma comes from the shared STFT's magnitude (not power: a loud bass note would swamp the mix) with
librosa's default octave weighting; on the procedural ground truth this beat power-chroma and chroma_cqt
(benchmarks/analysis_accuracy.py). Profiles: Temperley's (Kostka-Payne corpus), which scored best there.

Agreement with a reference key is the Pearson correlation of the chroma with that key's profile. The
relative key (same key signature, e.g. A minor / C major) shares all seven scale notes, so a chroma that
fits it best fits the reference almost as well; a progression like i-VI-III-VII is genuinely ambiguous
between the two, so the gate lets the relative key pass with its score capped (see gate.py)."""

from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np

from longsong.analysis.prep import N_FFT, SR

NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ALIASES = {"Db": 1, "D#": 3, "Gb": 6, "G#": 8, "A#": 10, "Cb": 11, "B#": 0, "E#": 5, "Fb": 4}
TEMPERLEY = ((0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
             (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330))
KRUMHANSL = ((6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
             (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17))
PROFILE = TEMPERLEY


@lru_cache(maxsize=4)
def chroma_basis(sr: int = SR) -> np.ndarray:
    return librosa.filters.chroma(sr=sr, n_fft=N_FFT)


@lru_cache(maxsize=4)
def templates(profile: tuple = PROFILE) -> np.ndarray:
    """(24, 12) unit-norm, zero-mean rows: index k < 12 is major on pitch class k, 12 + k minor."""
    rows = [np.roll(np.asarray(profile[m], dtype=float), k) for m in (0, 1) for k in range(12)]
    t = np.array(rows) - np.mean(rows, axis=1, keepdims=True)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def chroma(mag: np.ndarray) -> np.ndarray:
    """Mean of the per-frame max-normalised chroma of |STFT| (12 values, each frame counts alike)."""
    c = chroma_basis() @ mag
    c /= np.maximum(c.max(axis=0, keepdims=True), 1e-10)
    return c.mean(axis=1)


def correlations(c: np.ndarray, profile: tuple = PROFILE) -> np.ndarray:
    """Pearson correlation of a 12-bin chroma with each of the 24 keys."""
    x = np.asarray(c, dtype=float) - np.mean(c)
    n = np.linalg.norm(x)
    return templates(profile) @ (x / n) if n > 0 else np.zeros(24)


def key_index(name: str) -> int:
    """'A minor' -> 21, 'Eb major' -> 3 (index into `correlations`)."""
    note, mode = name.split()
    pc = NAMES.index(note) if note in NAMES else _ALIASES[note]
    return pc + (12 if mode.lower().startswith("min") else 0)


def key_name(index: int) -> str:
    return f"{NAMES[index % 12]} {'minor' if index >= 12 else 'major'}"


def relative(index: int) -> int:
    """The key with the same signature: A minor <-> C major."""
    return (index + 3) % 12 if index >= 12 else 12 + (index + 9) % 12


def signature_steps(a: int, b: int) -> int:
    """Steps around the circle of fifths between the key signatures of two keys (0: same signature, as
    C major / A minor; 1: a neighbour, as C major / G major / E minor)."""
    def position(k: int) -> int:
        major = k if k < 12 else relative(k)
        return (major * 7) % 12

    d = (position(a) - position(b)) % 12
    return min(d, 12 - d)


def relation(truth: int, est: int) -> str:
    """exact, relative, fifth (same mode, a fifth up or down), parallel (same tonic) or other."""
    if truth == est:
        return "exact"
    if est == relative(truth):
        return "relative"
    if truth // 12 == est // 12 and (est - truth) % 12 in (5, 7):
        return "fifth"
    if truth % 12 == est % 12:
        return "parallel"
    return "other"
