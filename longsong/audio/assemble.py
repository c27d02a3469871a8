"""Assemble decoded windows into one track: each window at its planned start, every seam
crossfaded on a beat of its overlap (the middle when none is found: `seams.place`),
sample-exact on the 50 Hz frame grid.

Two decodes of the same overlap tokens are nearly the same audio away from the window edges
(decoder warm-up), where an amplitude-complementary (linear) fade keeps the level and an
equal-power fade would bump it by up to 3 dB; unrelated audio needs equal power or it dips.
So each seam's law follows the measured correlation r of the two signals, continuously:
gains t and 1 - t, both scaled by 1 / sqrt(t² + (1-t)² + 2·r·t·(1-t)). That is exactly linear
at r = 1, constant-power at r = 0, and in between keeps the level of two equally loud signals
with correlation r (the mix's power is (gain_in² + gain_out² + 2·r·gain_in·gain_out)·P = P).
r is measured over the crossfade itself, frame by frame (`local_correlation`): two different
signals drift in and out of phase within one fade. The report gives r over the whole fade, plus
the level step and spectral-flux z-score measured on the assembled track (`seams.level_step_db`,
`seams.flux_z`).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from longsong.audio import seams as seam_lib
from longsong.audio.seams import Analysis, Placement
from longsong.frames import FRAME_RATE
from longsong.plan import Plan, Segment
from longsong.workflows.messages import SeamReport

LAW_NAME_TOLERANCE_DB = 0.1  # a seam is called "linear"/"equal-power" within this of that law
LOCAL_R_FLOOR = -0.5  # lowest local r the gains make up for (at -1 nothing can)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation at lag 0 over all channels, clamped to [0, 1]: anti-phase
    material cannot be rescued by gains, so it is faded as unrelated (0 where either is silent)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    # plain sums, not BLAS dot: its thread pool spins against the analysis on a busy machine
    energy = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.clip(np.sum(a * b) / energy, 0.0, 1.0)) if energy > 0 else 0.0


def local_correlation(a: np.ndarray, b: np.ndarray, hop: int) -> np.ndarray:
    """r at every sample: at each frame centre over a Hann window two frames wide (a 20 ms average
    that, tapered, does not wobble on tones), linearly interpolated between frame centres. Two
    different signals drift in and out of phase within a fade (r from -0.3 to 0.9 in 20 ms frames
    of one 0.5 s fade): one r for the whole fade dips or bumps the level where they do. Negative r
    is followed down to LOCAL_R_FLOOR (the gains rise to make up the cancellation)."""
    n = a.shape[1] // hop
    a, b = a[:, :n * hop].astype(np.float64), b[:, :n * hop].astype(np.float64)
    window = np.hanning(2 * hop + 2)[1:-1]  # 2 * hop taps, none zero
    sums = []
    for x, y in ((a, b), (a, a), (b, b)):
        product = np.pad((x * y).sum(axis=0), (hop // 2, hop - hop // 2))  # frame k's centre at k * hop + hop
        sums.append((sliding_window_view(product, 2 * hop)[::hop][:n] * window).sum(axis=1))
    ab, aa, bb = sums
    energy = np.sqrt(aa * bb)
    r = np.where(energy > 0, ab / np.where(energy > 0, energy, 1), 0.0).clip(LOCAL_R_FLOOR, 1.0)
    return np.interp(np.arange(n * hop) + 0.5, (np.arange(n) + 0.5) * hop, r)


def fade_gains(r: float | np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade-out gain for the earlier window, fade-in gain for the later one) over n samples,
    sampled at sample centres so neither window is ever fully silent or full inside the fade.
    r: one correlation for the whole fade, or one per sample."""
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


def _end(seg: Segment) -> int:
    return seg.start_frame + seg.n_frames


def placements(windows: list[np.ndarray], plan: Plan, hop: int, an: Analysis) -> list[Placement]:
    """Each seam's crossfade. Seam i's room is where windows i-1 and i both lie and window i-2
    no longer does: it depends on those two windows and the plan's geometry up to segment i only."""
    out, segs = [], plan.segments
    for i, centre in enumerate(plan.seam_frames(), start=1):
        first = max(segs[i].start_frame, _end(segs[i - 2]) if i >= 2 else 0)
        room = (first, min(_end(segs[i - 1]), _end(segs[i])))
        out.append(seam_lib.place((windows[i - 1], segs[i - 1].start_frame), (windows[i], segs[i].start_frame),
                                  room, centre, hop, an))
    return out


def assemble(windows: list[np.ndarray], plan: Plan, sample_rate: int
             ) -> tuple[np.ndarray, list[SeamReport]]:
    """The track (float32, exactly plan.track_samples(sample_rate) long) and one report per seam.

    windows[i] is segment i's decoded window; samples past its planned length are ignored.
    Outside the crossfades every sample is taken from exactly one window, untouched."""
    hop = _check(windows, plan, sample_rate)
    an = Analysis.for_rate(sample_rate)
    segs, places = plan.segments, placements(windows, plan, hop, an)
    out = np.zeros((windows[0].shape[0], plan.total_frames * hop), np.float32)
    for i, (seg, w) in enumerate(zip(segs, windows)):
        lo = places[i - 1].end if i > 0 else seg.start_frame
        hi = places[i].start if i < len(places) else _end(seg)
        out[:, lo * hop:hi * hop] = _span(w, seg, lo, hi, hop)
    laws = []
    for i, p in enumerate(places, start=1):
        earlier = _span(windows[i - 1], segs[i - 1], p.start, p.end, hop)
        later = _span(windows[i], segs[i], p.start, p.end, hop)
        r = correlation(earlier, later)
        fade_out, fade_in = fade_gains(local_correlation(earlier, later, hop), p.length * hop)
        out[:, p.start * hop:p.end * hop] = earlier * fade_out + later * fade_in
        laws.append(r)
    track = out[:, :plan.track_samples(sample_rate)]
    return track, reports(track, places, laws, hop, an)


def reports(track: np.ndarray, places: list[Placement], laws: list[float], hop: int,
            an: Analysis) -> list[SeamReport]:
    """One SeamReport per seam, its level step and flux z-score measured on the assembled track."""
    flux = seam_lib.track_flux(track, an) if places else np.zeros(0)
    return [SeamReport(i, p.start / FRAME_RATE, r, law_name(r), p.length / FRAME_RATE, p.kind,
                       seam_lib.level_step_db(track, p, hop), seam_lib.flux_z(flux, p))
            for i, (p, r) in enumerate(zip(places, laws), start=1)]
