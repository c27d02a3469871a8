"""Float audio <-> bytes for scratch objects (.npy: exact, fast, no codec)."""

from __future__ import annotations

import io

import numpy as np


def to_npy_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(audio, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def from_npy_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
