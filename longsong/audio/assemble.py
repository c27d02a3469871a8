"""Assemble decoded windows into one track: each window at its planned start, every seam
crossfaded in the middle of its overlap, sample-exact on the 50 Hz frame grid.

Two decodes of the same overlap tokens are nearly the same audio away from the window edges
(decoder warm-up), where an amplitude-complementary (linear) fade keeps the level and an
equal-power fade would bump it by up to 3 dB; unrelated audio needs equal power or it dips.
So each seam's law follows the measured correlation r of the two signals, continuously:
gains t and 1 - t, both scaled by 1 / sqrt(t² + (1-t)² + 2·r·t·(1-t)). That is exactly linear
at r = 1, constant-power at r = 0, and in between keeps the level of two equally loud signals
with correlation r (the mix's power is (gain_in² + gain_out² + 2·r·gain_in·gain_out)·P = P).
"""

from __future__ import annotations

import numpy as np

from longsong.frames import FRAME_RATE
from longsong.plan import Plan, Segment
from longsong.workflows.messages import SeamReport

LAW_NAME_TOLERANCE_DB = 0.1  # a seam is called "linear"/"equal-power" within this of that law


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation at lag 0 over all channels, clamped to [0, 1]: anti-phase
    material cannot be rescued by gains, so it is faded as unrelated (0 where either is silent)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    energy = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.clip(np.dot(a, b) / energy, 0.0, 1.0)) if energy > 0 else 0.0


def fade_gains(r: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade-out gain for the earlier window, fade-in gain for the later one) over n samples,
    sampled at sample centres so neither window is ever fully silent or full inside the fade."""
    t = (np.arange(n) + 0.5) / n
    scale = 1 / np.sqrt(t**2 + (1 - t) ** 2 + 2 * r * t * (1 - t))
    return (1 - t) * scale, t * scale


def law_name(r: float) -> str:
    """"linear" or "equal-power" when the gains stay within LAW_NAME_TOLERANCE_DB of that law
    (their largest difference is mid-fade), else "mixed(r=...)"."""
    if -10 * np.log10((1 + r) / 2) <= LAW_NAME_TOLERANCE_DB:
        return "linear"
    if 10 * np.log10(1 + r) <= LAW_NAME_TOLERANCE_DB:
        return "equal-power"
    return f"mixed(r={r:.2f})"


def _check(windows: list[np.ndarray], plan: Plan, sample_rate: int) -> int:
    """Validate the inputs against the plan; return the hop (samples per frame)."""
    if sample_rate <= 0 or sample_rate % FRAME_RATE:
        raise ValueError(f"sample_rate must be a positive multiple of {FRAME_RATE}, got {sample_rate}")
    if len(windows) != len(plan.segments):
        raise ValueError(f"got {len(windows)} windows for {len(plan.segments)} planned segments")
    hop = sample_rate // FRAME_RATE
    channels = windows[0].shape[0] if windows[0].ndim == 2 else None
    for seg, w in zip(plan.segments, windows):
        if w.ndim != 2:
            raise ValueError(f"segment {seg.index}: window must be (channels, samples), "
                             f"got shape {w.shape}")
        if w.shape[0] != channels:
            raise ValueError(f"segment {seg.index}: window has {w.shape[0]} channels, "
                             f"segment 0 has {channels}")
        if w.shape[1] < seg.n_frames * hop:
            raise ValueError(f"segment {seg.index}: window has {w.shape[1]} samples, the plan needs "
                             f"{seg.n_frames * hop} ({seg.n_frames} frames of {hop})")
    return hop


def _span(window: np.ndarray, seg: Segment, start: int, end: int, hop: int) -> np.ndarray:
    """The part of a window that lies on timeline frames [start, end)."""
    return window[:, (start - seg.start_frame) * hop:(end - seg.start_frame) * hop]


def assemble(windows: list[np.ndarray], plan: Plan, sample_rate: int
             ) -> tuple[np.ndarray, list[SeamReport]]:
    """The track (float32, exactly plan.track_samples(sample_rate) long) and one report per seam.

    windows[i] is segment i's decoded window; samples past its planned length are ignored.
    Outside the crossfades every sample is taken from exactly one window, untouched."""
    hop = _check(windows, plan, sample_rate)
    segs, seams = plan.segments, plan.seam_frames()
    out = np.zeros((windows[0].shape[0], plan.total_frames * hop), np.float32)
    for i, (seg, w) in enumerate(zip(segs, windows)):
        lo = seams[i - 1][1] if i > 0 else seg.start_frame
        hi = seams[i][0] if i < len(seams) else seg.start_frame + seg.n_frames
        out[:, lo * hop:hi * hop] = _span(w, seg, lo, hi, hop)
    reports = []
    for i, (start, end) in enumerate(seams, start=1):
        earlier = _span(windows[i - 1], segs[i - 1], start, end, hop)
        later = _span(windows[i], segs[i], start, end, hop)
        r = correlation(earlier, later)
        fade_out, fade_in = fade_gains(r, (end - start) * hop)
        out[:, start * hop:end * hop] = earlier * fade_out + later * fade_in
        reports.append(SeamReport(i, start / FRAME_RATE, r, law_name(r)))
    return out[:, :plan.track_samples(sample_rate)], reports
