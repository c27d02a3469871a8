"""`Features`: what later windows need of a kept window, without its audio (stored next to the window).

A few hundred numbers plus a float16 mel fingerprint (np.savez): about 21 KB for an 18 s part, 33 KB for
a 30 s first window."""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field, fields

import numpy as np

VERSION = 1
_ARRAYS = ("chroma", "short_term", "fingerprint", "beat_fold")


@dataclass
class Features:
    start_s: float  # track time where the new part starts
    duration_s: float = 0.0
    bpm: float = math.nan  # estimated (octave steered by the asked / the song's tempo); nan: no pulse
    pulse: float = 0.0  # pulse strength 0..1 (comb-averaged onset autocorrelation at the beat period)
    key: str = ""  # estimated key, e.g. "A minor"
    lufs: float = -120.0  # median short-term loudness
    peaks: float = 0.0  # share of spectral energy in narrow peaks: tonal content (content.py)
    flatness: float = 1.0  # median spectral flatness: noisiness (content.py)
    chroma: np.ndarray = field(default_factory=lambda: np.zeros(12, np.float32))  # mean chroma, C..B
    short_term: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # LUFS, every 0.5 s
    fingerprint: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))  # (bands, frames)
    beat_fold: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # last 8 s folded at 60/bpm

    @property
    def period_s(self) -> float:
        return 60.0 / self.bpm if self.bpm > 0 else math.nan

    def to_bytes(self) -> bytes:
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAYS}
        meta["v"] = VERSION
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 chroma=np.asarray(self.chroma, np.float32), short_term=np.asarray(self.short_term, np.float32),
                 fingerprint=np.asarray(self.fingerprint, np.float16),
                 beat_fold=np.asarray(self.beat_fold, np.float32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Features:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                arrays = {name: z[name] for name in _ARRAYS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"features: not a features record ({type(e).__name__}: {e})") from None
        if meta.pop("v", None) != VERSION:
            raise ValueError(f"features: version {meta.get('v')!r}, expected {VERSION}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names}, **arrays)

    def summary(self) -> dict:
        """The scalar facts (for logs and tests)."""
        return {k: v for k, v in asdict(self).items() if k not in _ARRAYS}
