"""Sample-level faults: NaN/inf (a diverged decoder), clipping (samples pinned at full scale), DC offset."""

from __future__ import annotations

import numpy as np

FULL_SCALE = 0.999  # |x| at or over this counts as clipped (float engines may also overshoot 1.0)


def clipped_share(audio: np.ndarray) -> float:
    """Share of samples at or over full scale, over all channels."""
    return float(np.count_nonzero(np.abs(audio) >= FULL_SCALE) / audio.size) if audio.size else 0.0


def dc_offset(audio: np.ndarray) -> float:
    """The largest |mean| of any channel."""
    return float(np.max(np.abs(audio.mean(axis=1, dtype=np.float64)))) if audio.size else 0.0
