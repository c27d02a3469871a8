"""Seams on music: on a beat, no level dip or step, no click. Procedural songs (their overlaps are the
same audio twice) and overlaps that hold two different signals: two procedural continuations, and
real recordings (Debian's sonic-pi-samples loops)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from longsong.audio.assemble import assemble
from longsong.audio.seams import LEAD_FRAMES, MARGIN_FRAMES
from longsong.engines.base import WindowRequest
from longsong.engines.procedural import ProceduralEngine
from longsong.frames import FRAME_RATE
from longsong.plan import Plan, make_plan
from longsong.request import Sampling, Section, SongRequest, validate

SR = 32000
HOP = SR // FRAME_RATE
SAMPLES = Path("/usr/share/sonic-pi/samples")  # apt-get install sonic-pi-samples


def render(req: SongRequest):
    plan = make_plan(validate(req), seed=5)
    engine = ProceduralEngine()
    windows, handoff = [], None
    for seg in plan.segments:
        res = engine.generate(WindowRequest(seg.text, seg.seed, seg.n_frames, seg.context_frames, Sampling(),
                                            handoff), lambda done, total: None)
        windows.append(res.audio)
        handoff = res.handoff
    track, seams = assemble(windows, plan, engine.sample_rate)
    return plan, windows, track, seams, engine.sample_rate


def generate(text: str, n_frames: int, handoff: bytes | None = None, seed: int = 3):
    return ProceduralEngine().generate(WindowRequest(text, seed, n_frames, 0, Sampling(), handoff),
                                       lambda done, total: None)


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12)


def frames(seam) -> tuple[int, int]:
    """The reported crossfade as timeline frames: whole frames, exactly."""
    start, length = seam.start_s * FRAME_RATE, seam.length_s * FRAME_RATE
    assert abs(start - round(start)) < 1e-9 and abs(length - round(length)) < 1e-9 and length >= 1, seam
    return round(start), round(start + length)


def on_timeline(window: np.ndarray, plan: Plan, index: int, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the timeline, taken from window `index`."""
    offset = plan.segments[index].start_frame * HOP
    return window[:, start - offset:stop - offset]


def cut(sources: list[np.ndarray], plan: Plan) -> list[np.ndarray]:
    """Window i cut from sources[i % len(sources)] at its planned place: with two sources on the same
    beat grid every overlap holds two different signals."""
    return [sources[s.index % len(sources)][:, s.start_frame * HOP:(s.start_frame + s.n_frames) * HOP]
            for s in plan.segments]


def level_matched(windows: list[np.ndarray], plan: Plan) -> list[np.ndarray]:
    """Each window scaled to the previous one's RMS over their overlap, as a loudness-consistent
    continuation would be (what the seam is then judged on is the seam, not the sources' levels)."""
    out = [windows[0]]
    for i in range(1, len(windows)):
        prev = plan.segments[i - 1]
        a, b = plan.segments[i].start_frame * HOP, (prev.start_frame + prev.n_frames) * HOP
        gain = np.sqrt(np.mean(on_timeline(out[-1], plan, i - 1, a, b) ** 2) /
                       np.mean(on_timeline(windows[i], plan, i, a, b) ** 2))
        out.append((windows[i] * gain).astype(np.float32))
    return out


def check_seam(plan, windows, track, seam, beat_frames: float | None) -> None:
    """The crossfade is clear of the window edges and (with beat_frames) on the beat grid; the level
    inside it stays between the two sources' (±1 dB, no dip, no bump); no sample step or
    high-frequency burst stands out against the rest of the track; the flux z-score is ordinary."""
    a, b = frames(seam)
    seg, prev = plan.segments[seam.index], plan.segments[seam.index - 1]
    if beat_frames is not None:
        assert seam.placement in ("downbeat", "beat"), seam
        assert a >= seg.start_frame + MARGIN_FRAMES and b <= prev.start_frame + prev.n_frames - MARGIN_FRAMES
        phase = (b + LEAD_FRAMES) % beat_frames
        assert min(phase, beat_frames - phase) <= 2, (seam, phase)  # within 40 ms of a true beat
        assert 0.2 <= seam.length_s <= 1.0 and abs(seam.length_s * FRAME_RATE - beat_frames) <= 1
    win = SR // 20
    for i in range(a * HOP - SR // 2, b * HOP + SR // 2, win):
        out = rms_db(track[:, i:i + win])
        src = (rms_db(on_timeline(windows[seam.index - 1], plan, seam.index - 1, i, i + win)),
               rms_db(on_timeline(windows[seam.index], plan, seam.index, i, i + win)))
        assert min(src) - 1 <= out <= max(src) + 1, (seam, i / SR, out, src)
    steps = np.abs(np.diff(track, axis=1)).max(axis=0)
    around = slice(a * HOP - HOP, b * HOP + HOP)
    rest = np.ones(steps.shape, bool)
    rest[around] = False
    assert steps[around].max() <= steps[rest].max(), seam
    hf = np.sqrt(np.mean(np.diff(track, axis=1)[:, :len(steps) // 320 * 320].reshape(track.shape[0], -1, 320) ** 2,
                         axis=(0, 2)))  # 10 ms blocks of the first difference (a +6 dB/octave tilt)
    blocks = slice(around.start // 320, around.stop // 320 + 1)
    outside = np.r_[hf[:blocks.start], hf[blocks.stop:]]
    assert hf[blocks].max() <= outside.max(), seam
    assert seam.flux_z < 3, seam


@pytest.mark.parametrize("req", [
    SongRequest(prompt="deep house groove", duration_s=100, bpm=122, key="A minor"),
    SongRequest(prompt="lofi hip hop", duration_s=90, bpm=84, sections=[Section(0, "intro"), Section(20, "verse"),
                                                                         Section(50, "chorus")]),
], ids=["house", "lofi-sections"])
def test_seams_keep_level_and_have_no_clicks(req):
    plan, windows, track, seams, sr = render(req)
    assert track.shape[1] == plan.track_samples(sr)
    for seam in seams:
        check_seam(plan, windows, track, seam, None)
        assert seam.placement in ("downbeat", "beat")  # procedural music has a beat
    assert all(s.law == "linear" for s in seams)  # procedural windows continue exactly


def two_continuations() -> tuple[Plan, list[np.ndarray]]:
    """Window 0 = the chorus that follows a song's first 30 s; window 1 = the bridge that would have
    followed instead, from the same hand-off: one tempo and bar grid, different parts and harmony."""
    plan = make_plan(validate(SongRequest(prompt="p", duration_s=48)), seed=1)
    first = generate("house 120 bpm, A minor", 1500)
    chorus = generate("house 120 bpm, A minor, chorus", 1500, first.handoff).audio
    bridge = generate("house 120 bpm, A minor, bridge", 2400, first.handoff).audio[:, 900 * HOP:]
    return plan, [chorus, bridge]


def two_songs() -> tuple[Plan, list[np.ndarray]]:
    """Two different songs at 120 bpm (genre, key, instruments), alternating window by window."""
    plan = make_plan(validate(SongRequest(prompt="p", duration_s=66)), seed=1)
    sources = [generate("house 120 bpm, A minor", 3300, seed=3).audio,
               generate("techno 120 bpm, F major", 3300, seed=9).audio]
    return plan, cut(sources, plan)


@pytest.mark.parametrize("build", [two_continuations, two_songs], ids=["chorus-vs-bridge", "two-songs"])
def test_different_procedural_overlaps_are_crossfaded_on_the_beat(build):
    plan, windows = build()
    windows = level_matched(windows, plan)
    track, seams = assemble(windows, plan, SR)
    for seam in seams:
        assert seam.correlation < 0.7 and seam.law != "linear", seam  # really two different signals
        check_seam(plan, windows, track, seam, beat_frames=25)
        assert abs(seam.level_step_db) <= 1, seam


def loop(name: str, bar_s: float | None = None) -> np.ndarray:
    """A sonic-pi loop at 32 kHz, resampled to bar_s seconds when given, RMS-normalised."""
    from longsong.audio.encode import decode

    path = SAMPLES / f"{name}.flac"
    assert path.exists(), "needs Debian's sonic-pi-samples (make test installs it: apt-get install sonic-pi-samples)"
    x, _ = decode(path, SR)
    if bar_s is not None:
        n = round(bar_s * SR)
        x = np.stack([np.interp(np.arange(n) * x.shape[1] / n, np.arange(x.shape[1]), c) for c in x])
    return (0.1 * x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def tiled(x: np.ndarray, n_samples: int) -> np.ndarray:
    return np.tile(x, (1, -(-n_samples // x.shape[1])))[:, :n_samples]


@pytest.mark.parametrize("names, bar_s, beat_frames, steady", [
    (("loop_amen", "loop_breakbeat"), 2.0, 25, True),  # two drum breaks, each resampled to one bar at 120 bpm
    (("loop_mika", "loop_garzul"), None, 25, True),  # two 8 s loops at 120 bpm as recorded
    (("loop_mehackit2", "loop_perc2"), None, 2.4742 * FRAME_RATE / 4, False),  # one bar at 97 bpm each
], ids=["breaks-120", "loops-120", "loops-97"])
def test_real_recordings_are_crossfaded_on_the_beat(names, bar_s, beat_frames, steady):
    """steady: both loops hold their level within ~1.7 dB from one 1 s span to the next (perc2 swings
    8 dB within its bar, so there the sources themselves step at any seam)."""
    plan = make_plan(validate(SongRequest(prompt="p", duration_s=66)), seed=1)
    sources = [tiled(loop(n, bar_s), plan.total_frames * HOP) for n in names]
    windows = level_matched(cut(sources, plan), plan)
    track, seams = assemble(windows, plan, SR)
    assert len(seams) == 2
    for seam in seams:
        assert seam.correlation < 0.5, seam
        check_seam(plan, windows, track, seam, beat_frames)
        a, b = frames(seam)
        w = round(beat_frames * max(1, round(FRAME_RATE / beat_frames)))  # whole beats, about 1 s
        earlier, later = windows[seam.index - 1], windows[seam.index]
        before = rms_db(on_timeline(earlier, plan, seam.index - 1, (a - w) * HOP, a * HOP))
        after = rms_db(on_timeline(later, plan, seam.index, b * HOP, (b + w) * HOP))
        assert seam.level_step_db == pytest.approx(after - before, abs=1e-3)
        if steady:  # the step the seam adds beyond the music's own (the earlier source's over the same spans)
            own = rms_db(on_timeline(earlier, plan, seam.index - 1, b * HOP, (b + w) * HOP)) - before
            assert abs(seam.level_step_db - own) <= 1, (seam, own)


def test_assembling_the_first_windows_gives_the_same_samples_up_to_the_next_seam():
    """Extension relies on it: seam i's placement depends on windows i-1 and i only."""
    plan = make_plan(validate(SongRequest(prompt="p", duration_s=102)), seed=1)
    sources = [generate("house 120 bpm, A minor", plan.total_frames, seed=3).audio,
               generate("techno 120 bpm, F major", plan.total_frames, seed=9).audio]
    windows = cut(sources, plan)
    full, seams = assemble(windows, plan, SR)
    assert len(seams) == 4 and {s.placement for s in seams} <= {"downbeat", "beat"}
    for k in range(2, len(windows)):
        end = plan.segments[k - 1].start_frame + plan.segments[k - 1].n_frames
        prefix_plan = replace(plan, segments=plan.segments[:k], duration_s=end / FRAME_RATE, total_frames=end)
        prefix, prefix_seams = assemble(windows[:k], prefix_plan, SR)
        upto = frames(seams[k - 1])[0] * HOP  # the start of seam k, the first the prefix lacks
        assert np.array_equal(prefix[:, :upto], full[:, :upto]), k
        same = [replace(s, flux_z=0.0) for s in prefix_seams]  # flux z is against the whole track's
        assert same == [replace(s, flux_z=0.0) for s in seams[:k - 1]]


def test_same_windows_give_a_bit_identical_track_and_the_same_reports():
    plan, windows = two_songs()
    track, seams = assemble(windows, plan, SR)
    again, seams_again = assemble([w.copy() for w in windows], plan, SR)
    assert np.array_equal(track, again) and seams == seams_again


def test_outside_the_crossfades_every_sample_is_one_window_s_untouched():
    plan, windows = two_songs()
    track, seams = assemble(windows, plan, SR)
    edges = [plan.segments[0].start_frame, *[f for s in seams for f in frames(s)], plan.total_frames]
    for i, (lo, hi) in enumerate(zip(edges[::2], edges[1::2])):
        hi = min(hi * HOP, track.shape[1])
        assert np.array_equal(track[:, lo * HOP:hi], on_timeline(windows[i], plan, i, lo * HOP, hi)), i
