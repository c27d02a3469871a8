"""The musicgen hand-off state (WindowResult.handoff): all of a window's EnCodec codes.

Continuation is by tokens: the next window's decoder is prefilled with the last `context_frames`
of these codes through MusicGen's delay pattern, so audio is never re-encoded. The state is int16
codes as .npy behind a magic and a small JSON header (model, revision, codebooks), so the engine
can refuse a state from another engine or from a model with other codebooks.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

from longsong.engines.base import EngineError
from longsong.frames import FRAME_RATE

HANDOFF_MAGIC = b"LSMGCODE"
HANDOFF_VERSION = 1


def encode_handoff(codes: np.ndarray, model: str, revision: str, audio_channels: int) -> bytes:
    """MAGIC, u32 header length, JSON header, then the codes (K, n) as an int16 .npy."""
    codes = np.ascontiguousarray(codes, dtype=np.int16)
    header = json.dumps({"format": "musicgen-codes", "version": HANDOFF_VERSION, "model": model,
                         "revision": revision, "codebooks": int(codes.shape[0]), "frames": int(codes.shape[1]),
                         "audio_channels": int(audio_channels), "frame_rate": FRAME_RATE}).encode()
    buf = io.BytesIO()
    np.save(buf, codes, allow_pickle=False)
    return HANDOFF_MAGIC + struct.pack("<I", len(header)) + header + buf.getvalue()


def decode_handoff(data: bytes) -> tuple[dict, np.ndarray]:
    """(header, codes (K, n) int64) of a hand-off state; EngineError (field `handoff`) when malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:8]) != HANDOFF_MAGIC:
        raise EngineError("handoff: not a musicgen hand-off state (was the previous window made by another engine?)")
    data = bytes(data)
    try:
        (n,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12:12 + n])
        codes = np.load(io.BytesIO(data[12 + n:]), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"handoff: corrupt musicgen hand-off state ({type(exc).__name__})") from None
    if header.get("version") != HANDOFF_VERSION or codes.ndim != 2 or codes.dtype != np.int16 \
            or codes.shape != (header.get("codebooks"), header.get("frames")):
        raise EngineError(f"handoff: unsupported musicgen hand-off state (version {header.get('version')}, "
                          f"codes {codes.dtype} {codes.shape})")
    return header, codes.astype(np.int64)
