"""Assembly: windows placed on the frame grid, seams crossfaded with a correlation-chosen law."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longsong.audio.assemble import assemble, correlation, fade_gains, law_name
from longsong.audio.seams import LEAD_FRAMES, MARGIN_FRAMES, Analysis, beat_period, excerpt_flux
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


# --- where the crossfade goes (longsong/audio/seams.py) ---------------------------------------------

def drums(n_samples: int, bpm: float = 120.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Stereo drum loop from time 0: a kick on every beat (the bar's first loud), a noise hat on every
    eighth (its own noise per seed), over a quiet pad whose chord depends on the seed."""
    rng = np.random.default_rng(seed)
    n_kick, n_hat = sr // 4, sr // 20
    kick = np.sin(2 * np.pi * 55 * np.arange(n_kick) / sr) * np.exp(-np.arange(n_kick) / (0.06 * sr))
    t = np.arange(n_samples) / sr
    out = sum(0.02 * np.sin(2 * np.pi * f * t) for f in 220 * 2 ** (rng.integers(0, 12, 3) / 12))
    half_beat = 30 * sr / bpm
    for k in range(int(n_samples / half_beat) + 1):
        pos = round(k * half_beat)
        if k % 2 == 0:
            piece = kick * (1.0 if k % 8 == 0 else 0.3)
            out[pos:pos + n_kick] += piece[:n_samples - pos]
        hat = 0.15 * rng.standard_normal(n_hat) * np.exp(-np.arange(n_hat) / (0.01 * sr))
        out[pos:pos + n_hat] += hat[:n_samples - pos]
    return np.stack([out, out]).astype(np.float32)


def alternating(plan: Plan, sources: list[np.ndarray], hop: int = HOP) -> list[np.ndarray]:
    """Window i cut from sources[i % 2]: every overlap holds two different signals on one beat grid."""
    return [sources[s.index % 2][:, s.start_frame * hop:(s.start_frame + s.n_frames) * hop].copy()
            for s in plan.segments]


@pytest.mark.parametrize("bpm", [90.0, 120.0, 160.0])
def test_the_crossfade_lands_on_the_downbeat_clear_of_the_window_edges(bpm):
    plan = plan_for(66)
    n = plan.total_frames * HOP
    track, seams = assemble(alternating(plan, [drums(n, bpm, seed=1), drums(n, bpm, seed=2)]), plan, SR)
    beat = 60 * FRAME_RATE / bpm
    for seam, seg in zip(seams, plan.segments[1:]):
        start, length = round(seam.start_s * FRAME_RATE), round(seam.length_s * FRAME_RATE)
        assert seam.placement == "downbeat" and length == round(beat)
        assert start >= seg.start_frame + MARGIN_FRAMES
        assert start + length <= seg.start_frame + seg.context_frames - MARGIN_FRAMES
        bars = (start + length + LEAD_FRAMES) / (4 * beat)
        assert abs(bars - round(bars)) * 4 * beat <= 1.5, (seam, bars)  # ends just before a bar line
        assert seam.flux_z < 3  # (the level steps up: the loud downbeat comes right after the fade)


def test_beat_period_and_its_salience():
    an = Analysis.for_rate(SR)
    for bpm in (90.0, 120.0, 150.0):
        env, _ = excerpt_flux(drums(12 * SR, bpm), 0, 100, 500, HOP, an)
        period, salience = beat_period(env)
        assert period == pytest.approx(60 * FRAME_RATE / bpm, abs=0.5) and salience > 0.5
    env, _ = excerpt_flux(noise(2, 12 * SR, seed=3), 0, 100, 500, HOP, an)
    assert beat_period(env)[1] < 0.15


@pytest.mark.parametrize("sr", [16000, 24000, 32000, 44100, 48000])
def test_the_analysis_rate_keeps_whole_frames(sr):
    an = Analysis.for_rate(sr)
    assert an.hop * an.factor == sr // FRAME_RATE and an.rate >= 8000 and an.rate * an.factor == sr


def drone(samples: int) -> np.ndarray:
    """Ambient: a chord swelling over 7 s, no attacks."""
    t = np.arange(samples) / SR
    chord = sum(np.sin(2 * np.pi * f * t) for f in (110.0, 164.8, 220.0, 277.2))
    return (0.05 * (1.2 + np.sin(2 * np.pi * t / 7)) * chord)[None].repeat(2, axis=0).astype(np.float32)


@pytest.mark.parametrize("kind", ["silence", "noise", "drone"])
def test_no_beat_falls_back_to_the_centre_and_the_request_s_length(kind):
    plan = plan_for(66)
    n = plan.total_frames * HOP
    sources = {"silence": [np.zeros((2, n), np.float32)] * 2,
               "noise": [noise(2, n, seed=4), noise(2, n, seed=5)],
               "drone": [drone(n), 0.7 * drone(n)[:, ::-1].copy()]}[kind]
    track, seams = assemble(alternating(plan, sources), plan, SR)
    for seam, (start, end) in zip(seams, plan.seam_frames()):
        assert seam.placement == "centre" and seam.start_s == start / FRAME_RATE
        assert seam.length_s == (end - start) / FRAME_RATE == plan.crossfade_frames / FRAME_RATE
    assert kind != "silence" or all(s.level_step_db == 0 and s.flux_z == 0 for s in seams)


def test_an_overlap_too_short_for_the_margins_falls_back_to_the_centre():
    plan = make_plan(SongRequest(prompt="p", duration_s=60, overlap_s=4, crossfade_s=1), seed=7)
    n = plan.total_frames * HOP
    _, seams = assemble(alternating(plan, [drums(n, seed=1), drums(n, seed=2)]), plan, SR)
    assert [s.placement for s in seams] == ["centre"] * len(seams)
    assert [s.start_s for s in seams] == [a / FRAME_RATE for a, _ in plan.seam_frames()]


def test_level_step_and_flux_z_measure_the_assembled_track():
    """A later window 6 dB louder steps the level by 6 dB more; a click inside the fade stands out in flux."""
    plan = plan_for(48)
    n = plan.total_frames * HOP
    windows = alternating(plan, [drums(n, seed=1), drums(n, seed=2)])
    _, (clean,) = assemble(windows, plan, SR)
    _, (louder,) = assemble([windows[0], 2 * windows[1]], plan, SR)
    assert louder.start_s == clean.start_s and louder.placement == "downbeat"
    assert louder.level_step_db - clean.level_step_db == pytest.approx(20 * np.log10(2), abs=0.05)
    windows = alternating(plan, [drone(n), 0.7 * drone(n)[:, ::-1].copy()])
    _, (smooth,) = assemble(windows, plan, SR)
    mid = round((smooth.start_s + smooth.length_s / 2 - plan.segments[1].start_s) * SR)
    windows[1][:, mid] += 0.5
    _, (click,) = assemble(windows, plan, SR)
    assert click.start_s == smooth.start_s and abs(smooth.flux_z) < 3 < click.flux_z


def test_a_beat_placed_fade_keeps_clear_of_decoder_warm_up_too():
    """Garbage in the first and last MARGIN_FRAMES of every overlap of music with a beat: the
    crossfade moves onto a beat but never into it."""
    plan = plan_for(100)
    source = drums(plan.total_frames * HOP, bpm=120, seed=1)
    windows = cut(source, plan)
    edge = MARGIN_FRAMES * HOP
    for i, w in enumerate(windows):
        if i > 0:
            w[:, :edge] = noise(2, edge, seed=100 + i)
        if i < len(windows) - 1:
            w[:, -edge:] = noise(2, edge, seed=200 + i)
    track, seams = assemble(windows, plan, SR)
    assert {s.placement for s in seams} == {"downbeat"} and {s.law for s in seams} == {"linear"}
    np.testing.assert_allclose(track, source[:, :track.shape[1]], atol=1e-6)
