"""Each delivered format limited to the ceiling with only the margin it needs, checked on the decoded file.

Lossless files hold the samples they are given, so they are limited to the ceiling itself (after the
watermark, which can lift a true peak by a hair). A lossy decoder overshoots what it was fed, by an
amount that depends on the codec and the material (MP3 320k: 0.05-1.3 dB here; Opus 192k: more), so a
lossy format is encoded, decoded and measured, and its margin corrected until the decoded true peak
lands between `FLOOR_DB` under the ceiling and `OVER_DB` over it; each margin's extra limiting is made
up with gain (`fit_loudness`), so the file keeps the master's loudness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longsong.audio.encode import encode, encode_and_decode
from longsong.audio.limiter import limit_true_peak
from longsong.audio.mastering import fit_loudness, playback_loudness
from longsong.audio.true_peak import true_peak_dbtp

LOSSLESS = ("wav", "flac")
OVER_DB = 0.1  # a decoded true peak may sit this far over the ceiling
FLOOR_DB = 0.3  # and no further under it than this, when the master reaches the ceiling
AIM_DB = 0.1  # a corrected margin aims the decoded peak this far under the ceiling (mid-window)
FIRST_MARGIN_DB = {"mp3": 0.3, "opus": 0.5}  # typical decode overshoot on limited music, a first guess
MAX_PASSES = 5


@dataclass
class Delivered:
    path: Path
    true_peak_dbtp: float  # of the file as decoded
    loudness_lufs: float  # of the file as decoded, as played (mono counts as dual mono)
    margin_db: float  # limited this far under the requested ceiling
    passes: int  # encodes it took
    seconds: float


def deliver(audio: np.ndarray, sr: int, fmt: str, path: Path, tags: dict[str, str], ceiling_dbtp: float,
            max_gain_db: float = 30.0) -> Delivered:
    """Encode `audio` (mastered, watermarked) to `path` as `fmt` with its true peak on the ceiling and
    its loudness kept (at most `max_gain_db` more gain to make up a margin)."""
    started = time.perf_counter()
    if fmt in LOSSLESS:
        limited, _ = limit_true_peak(audio, sr, ceiling_dbtp)
        encode(limited, sr, fmt, path, tags)
        return Delivered(path, true_peak_dbtp(limited, sr), playback_loudness(limited, sr), 0.0, 1,
                         time.perf_counter() - started)
    reaches = true_peak_dbtp(audio, sr) >= ceiling_dbtp - FLOOR_DB  # else no margin can bring it up
    loudness = playback_loudness(audio, sr)
    margin, passes = FIRST_MARGIN_DB.get(fmt, 0.0), 0
    while True:
        limited, _ = fit_loudness(audio, sr, loudness, ceiling_dbtp - margin, max_gain_db, before=loudness)
        decoded, dsr = encode_and_decode(limited, sr, fmt, path, tags)
        peak, passes = true_peak_dbtp(decoded, dsr), passes + 1
        over = peak > ceiling_dbtp + OVER_DB
        under = reaches and margin > 0 and peak < ceiling_dbtp - FLOOR_DB
        if passes == MAX_PASSES or not (over or under):
            break
        margin = max(0.0, margin + peak - (ceiling_dbtp - AIM_DB))
    return Delivered(path, peak, playback_loudness(decoded, dsr), margin, passes, time.perf_counter() - started)
