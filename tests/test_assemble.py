"""Assembly: windows placed on the frame grid, seams crossfaded with a correlation-chosen law."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longsong.audio.assemble import assemble, correlation, fade_gains, law_name
from longsong.frames import FRAME_RATE
from longsong.plan import Plan, make_plan
from longsong.request import SongRequest

SR = 32000
HOP = SR // FRAME_RATE


def plan_for(duration_s: float) -> Plan:
    return make_plan(SongRequest(prompt="test", duration_s=duration_s), seed=7)


def cut(source: np.ndarray, plan: Plan, hop: int = HOP) -> list[np.ndarray]:
    """Each segment's window cut from one long signal: overlaps are identical audio."""
    return [source[:, s.start_frame * hop:(s.start_frame + s.n_frames) * hop].copy() for s in plan.segments]


def noise(channels: int, samples: int, seed: int) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal((channels, samples), np.float32)


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2))


def short_term_rms_db(x: np.ndarray, start: int, stop: int, size: int = SR // 20) -> np.ndarray:
    """RMS (dB) of consecutive 50 ms windows of x[:, start:stop]."""
    return np.array([rms_db(x[:, i:i + size]) for i in range(start, stop - size + 1, size)])


@pytest.mark.parametrize("duration_s, channels", [(30, 1), (45.37, 2), (180, 1), (241, 2)])
def test_identical_overlaps_give_the_source_back_exactly_long(duration_s, channels):
    plan = plan_for(duration_s)
    source = noise(channels, plan.total_frames * HOP, seed=1)
    track, seams = assemble(cut(source, plan), plan, SR)
    assert track.shape == (channels, round(duration_s * SR)) and track.dtype == np.float32
    assert np.abs(track - source[:, :track.shape[1]]).max() < 1e-6
    assert len(seams) == len(plan.segments) - 1
    for seam, (start, _) in zip(seams, plan.seam_frames()):
        assert seam.law == "linear" and seam.correlation == pytest.approx(1.0)
        assert seam.start_s == start / FRAME_RATE


@settings(max_examples=25, deadline=None)
@given(duration_s=st.integers(3000, 60000).map(lambda c: c / 100),
       segment_frames=st.integers(500, 1500), overlap=st.floats(0.05, 0.95), fade=st.floats(0.0, 1.0))
def test_any_valid_plan_is_assembled_sample_exact(duration_s, segment_frames, overlap, fade):
    """Windows cut from a sample-index ramp (exact in float32 at 16 kHz up to 600 s): the track
    is the ramp itself, exactly round(duration * sr) long, whatever the plan's geometry."""
    sr = 16000
    hop = sr // FRAME_RATE
    segment_s = segment_frames / FRAME_RATE
    overlap_s = round(1 + overlap * (segment_s - 6), 2)
    crossfade_s = round(0.1 + fade * (overlap_s - 0.1), 2)
    plan = make_plan(SongRequest(prompt="p", duration_s=duration_s, segment_s=segment_s,
                                 overlap_s=overlap_s, crossfade_s=crossfade_s), seed=1)
    ramp = np.arange(plan.total_frames * hop, dtype=np.float32)[None]
    track, seams = assemble(cut(ramp, plan, hop), plan, sr)
    assert track.shape == (1, round(duration_s * sr))
    assert np.array_equal(track, ramp[:, :track.shape[1]])
    assert len(seams) == len(plan.segments) - 1


def test_decoder_warm_up_at_window_edges_never_reaches_the_track():
    """Garbage in the first and last 4 s of each overlap lies outside the centred 2 s fade."""
    plan = plan_for(100)
    source = noise(2, plan.total_frames * HOP, seed=2)
    windows = cut(source, plan)
    edge = 4 * SR
    for i, w in enumerate(windows):
        if i > 0:
            w[:, :edge] = noise(2, edge, seed=100 + i)
        if i < len(windows) - 1:
            w[:, -edge:] = noise(2, edge, seed=200 + i)
    track, seams = assemble(windows, plan, SR)
    np.testing.assert_allclose(track, source[:, :track.shape[1]], atol=1e-6)
    assert {s.law for s in seams} == {"linear"}


def test_unrelated_windows_are_crossfaded_at_constant_power():
    plan = plan_for(80)
    windows = [noise(2, s.n_frames * HOP, seed=10 + s.index) for s in plan.segments]
    track, seams = assemble(windows, plan, SR)
    for seam, (start, end) in zip(seams, plan.seam_frames()):
        assert seam.law == "equal-power" and seam.correlation < 0.02
        around = short_term_rms_db(track, (start - 2 * FRAME_RATE) * HOP, (end + 2 * FRAME_RATE) * HOP)
        reference = np.median(np.r_[around[:40], around[-40:]])  # the 2 s either side
        assert np.abs(around - reference).max() < 1.0


def test_partly_correlated_windows_keep_their_level_too():
    """Shared music plus independent parts (r ~ 0.5): a mixed law, no dip and no bump."""
    plan = plan_for(60)
    shared = noise(2, plan.total_frames * HOP, seed=3)
    windows = [w + noise(2, w.shape[1], seed=30 + i) for i, w in enumerate(cut(shared, plan))]
    track, seams = assemble(windows, plan, SR)
    for seam, (start, end) in zip(seams, plan.seam_frames()):
        assert seam.law.startswith("mixed(r=0.") and 0.4 < seam.correlation < 0.6
        around = short_term_rms_db(track, (start - 2 * FRAME_RATE) * HOP, (end + 2 * FRAME_RATE) * HOP)
        assert np.abs(around - np.median(around)).max() < 1.0


def test_no_sample_step_at_a_seam_beyond_the_signal_s_own():
    """Each window is the same tone with a different phase (r = cos of the phase difference):
    the law keeps the amplitude at exactly 1 through each fade, so the largest sample-to-sample
    step stays the tone's own, 2*sin(pi*f/sr), at the fade edges and inside alike."""
    plan = plan_for(70)
    freq = 441.0
    rng = np.random.default_rng(4)
    phases = np.cumsum(rng.uniform(0, np.pi / 2, len(plan.segments)))
    windows = []
    for seg, phase in zip(plan.segments, phases):
        t = (seg.start_frame * HOP + np.arange(seg.n_frames * HOP)) / SR
        windows.append(np.sin(2 * np.pi * freq * t + phase)[None].astype(np.float32))
    track, seams = assemble(windows, plan, SR)
    own_step = 2 * np.sin(np.pi * freq / SR)
    assert np.abs(np.diff(track[0])).max() <= own_step * 1.001
    for start, end in plan.seam_frames():
        fade = track[0, start * HOP:end * HOP]
        assert np.abs(fade).max() == pytest.approx(1.0, abs=2e-3)
    assert [s.correlation for s in seams] == pytest.approx(np.cos(np.diff(phases)), abs=1e-3)


def test_fade_law_endpoints_and_names():
    out, into = fade_gains(1.0, 1000)
    np.testing.assert_allclose(out + into, 1.0)
    out, into = fade_gains(0.0, 1000)
    np.testing.assert_allclose(out**2 + into**2, 1.0)
    assert law_name(1.0) == "linear" and law_name(0.96) == "linear"
    assert law_name(0.0) == "equal-power" and law_name(0.02) == "equal-power"
    assert law_name(0.63) == "mixed(r=0.63)"


def test_correlation_is_clamped_and_safe_on_silence():
    x = noise(2, 1000, seed=5)
    assert correlation(x, x) == pytest.approx(1.0)
    assert correlation(x, -x) == 0.0
    assert correlation(x, np.zeros_like(x)) == 0.0


def test_other_sample_rates_and_longer_windows():
    sr = 24000
    hop = sr // FRAME_RATE
    plan = plan_for(45.37)
    source = noise(2, plan.total_frames * hop + 5000, seed=6)
    windows = [np.concatenate([w, noise(2, 300, seed=9)], axis=1) for w in cut(source, plan, hop)]
    track, _ = assemble(windows, plan, sr)
    assert track.shape == (2, round(45.37 * sr))
    np.testing.assert_allclose(track, source[:, :track.shape[1]], atol=1e-6)


def test_bad_windows_are_refused_naming_the_segment():
    plan = plan_for(60)
    windows = cut(noise(2, plan.total_frames * HOP, seed=8), plan)
    with pytest.raises(ValueError, match=r"segment 2: window has .* samples, the plan needs"):
        assemble([*windows[:2], windows[2][:, :-1], *windows[3:]], plan, SR)
    with pytest.raises(ValueError, match="segment 1: window has 1 channels, segment 0 has 2"):
        assemble([windows[0], windows[1][:1], *windows[2:]], plan, SR)
    with pytest.raises(ValueError, match="segment 0: window must be"):
        assemble([windows[0][0], *windows[1:]], plan, SR)
    with pytest.raises(ValueError, match="windows for"):
        assemble(windows[:-1], plan, SR)
    with pytest.raises(ValueError, match="sample_rate"):
        assemble(windows, plan, 44101)
