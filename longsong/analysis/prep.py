"""One pass over the new part that every analyzer shares: mono at a low rate, one STFT, mel and onsets.

The engines write 32 kHz; tempo, key, repetition and content need nothing above ~5 kHz, so the mono mix is
resampled (soxr) to 11025 Hz and everything derives from one 2048-point STFT with a 23 ms hop. Loudness,
clipping and DC read the audio as given (BS.1770 K-weighting needs the real rate and channels)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np
import soxr

SR = 11025  # analysis rate
N_FFT = 2048  # 186 ms: semitones resolved down to ~90 Hz for chroma
HOP = 256  # 23.2 ms: onset envelope and frame grid at 43 frames/s
N_MELS = 48
BAND_SPLIT_HZ = 200.0  # the beat grid folds low (kick, bass) and high onsets apart: hats on the off-beat
FPS = SR / HOP


@dataclass
class Prepared:
    audio: np.ndarray  # (channels, samples) float32 at `sample_rate`, non-finite samples zeroed
    sample_rate: int
    y: np.ndarray  # mono at SR
    mag: np.ndarray  # |STFT| (1 + N_FFT/2, frames)
    mel_db: np.ndarray  # (N_MELS, frames) power mel in dB, floor at -80 dB under the part's peak
    onset: np.ndarray  # onset strength per frame (librosa's spectral flux on mel_db)
    onset_bands: np.ndarray  # (2, frames): the same under and over BAND_SPLIT_HZ (kick and bass / the rest)
    nonfinite: float  # share of samples that were NaN or inf

    @property
    def duration_s(self) -> float:
        return self.audio.shape[1] / self.sample_rate


@lru_cache(maxsize=4)
def mel_basis(sr: int = SR) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=N_MELS, fmin=30.0, fmax=sr / 2)


def prepare(audio: np.ndarray, sample_rate: int) -> Prepared:
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    bad = ~np.isfinite(audio)
    nonfinite = float(bad.mean()) if audio.size else 0.0
    if nonfinite:
        audio = np.where(bad, np.float32(0.0), audio)
    mono = audio.mean(axis=0, dtype=np.float32)
    y = soxr.resample(mono, sample_rate, SR).astype(np.float32) if sample_rate != SR else mono
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    mag = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    mel_db = librosa.power_to_db(mel_basis() @ (mag * mag), ref=1.0, amin=1e-10, top_db=80.0)
    onset = librosa.onset.onset_strength(S=mel_db, sr=SR, hop_length=HOP)
    bands = librosa.onset.onset_strength_multi(S=mel_db, sr=SR, hop_length=HOP, channels=[0, split_band(), N_MELS])
    return Prepared(audio, sample_rate, y, mag, mel_db, onset, bands, nonfinite)


@lru_cache(maxsize=1)
def split_band() -> int:
    """First mel band centred over BAND_SPLIT_HZ."""
    centres = librosa.mel_frequencies(N_MELS + 2, fmin=30.0, fmax=SR / 2)[1:-1]
    return int(np.searchsorted(centres, BAND_SPLIT_HZ))
