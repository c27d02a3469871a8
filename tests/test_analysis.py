"""Window analyzers (longsong/analysis) against ground truth, and each measure against the defect it is for.

Ground truth: procedural songs of known bpm/key; real recorded loops of the Debian package sonic-pi-samples
(tempo from length and beat count, see tests/groundtruth.py); pieces of known key and tempo
rendered with real sampled instruments by fluidsynth + fluid-soundfont-gm. None of it is skipped when a
package is missing: the test fails and names the package to install.
"""

from __future__ import annotations

import math
import re
import time

import librosa
import numpy as np
import pyloudnorm
import pytest

import groundtruth as gt
from longsong.analysis import key as keys
from longsong.analysis import level, tempo
from longsong.analysis.features import Features
from longsong.analysis.gate import analyze, warm_up
from longsong.analysis.prep import prepare
from longsong.analysis.report import FAIL, PASS, SKIPPED, Expectation, Thresholds
from longsong.engines.base import WindowRequest
from longsong.engines.faults import inject
from longsong.engines.procedural import ProceduralEngine
from longsong.frames import FRAME_RATE
from longsong.plan import make_plan
from longsong.request import Sampling, Section, SongRequest, validate

SR = 32000
TH = Thresholds()
CLEAN_SONGS = (  # (prompt, bpm, key, seed): genres with and without drums, swing, both modes, 72-174 bpm
    ("dark synthwave with warm pads", 110, "A minor", 1),
    ("happy house", 124, "F# major", 2),
    ("calm jazz trio", 96, "Bb major", 3),
    ("lofi hip hop", 82, "Eb minor", 4),
    ("drum and bass", 174, "E minor", 5),
    ("ambient drone", 68, "D major", 6),
)


@pytest.fixture(scope="module", autouse=True)
def warmed():
    warm_up()


def procedural_song(prompt: str, bpm: int, key: str, seed: int, windows: int, sections=()):
    """[(start_s, full window audio, new-part start sample, details)] as the workflow plans the song."""
    req = validate(SongRequest(prompt=prompt, duration_s=30.0 + 18 * (windows - 1), bpm=bpm, key=key, seed=seed,
                               sections=list(sections)))
    plan = make_plan(req, req.seed)
    engine, handoff, out = ProceduralEngine(), None, []
    for seg in plan.segments:
        res = engine.generate(WindowRequest(seg.text, seg.seed, seg.n_frames, seg.context_frames,
                                            Sampling.of(req), handoff, index=seg.index), lambda d, t: None)
        handoff = res.handoff
        out.append(((seg.start_frame + seg.context_frames) / FRAME_RATE, res.audio,
                    seg.context_frames * SR // FRAME_RATE, res.details))
    return out


def run_song(windows, expect: Expectation):
    """Analyse every window with the earlier ones as history: [(report, features)]."""
    history, out = [], []
    for start_s, audio, start, _ in windows:
        report, feats = analyze(audio[:, start:], SR, start_s, list(history), expect, TH)
        out.append((report, feats))
        history.append(feats)
    return out


@pytest.fixture(scope="module")
def clean_songs():
    """Every window of the CLEAN_SONGS (10 windows each) analysed: {song: (windows, [(report, features)])}."""
    out = {}
    for s in CLEAN_SONGS:
        windows = procedural_song(*s, windows=10)
        out[s] = windows, run_song(windows, Expectation(float(s[1]), s[2]))
    return out


@pytest.fixture(scope="module")
def pair():
    """Window 1 of a song (a 18 s new part) with window 0's features as history, and what they expect."""
    windows = procedural_song("driving synthwave", 112, "A minor", 7, windows=3)
    expect = Expectation(112.0, "A minor")
    _, first = analyze(windows[0][1], SR, 0.0, [], expect, TH)
    start_s, audio, start, _ = windows[1]
    return audio, start, start_s, [first], expect


def judge(pair, new: np.ndarray, expect: Expectation | None = None):
    _audio, _start, start_s, history, exp = pair
    report, _ = analyze(new, SR, start_s, list(history), expect or exp, TH)
    return report


def measure(report, name):
    return next(m for m in report.measures if m.name == name)


def spoiled(pair, fault: str) -> np.ndarray:
    audio, start, *_ = pair
    return inject(audio, start, fault, SR)[:, start:]


# --- clean songs pass ------------------------------------------------------------------------------------------

def test_clean_procedural_songs_pass_every_measure(clean_songs):
    bad = [f"{s[0]!r} window {i}: {m.name} {m.note}" for s, (_, results) in clean_songs.items()
           for i, (report, _) in enumerate(results) for m in report.measures if m.verdict == FAIL]
    assert not bad, "\n".join(bad)
    for s, (_, results) in clean_songs.items():
        judged = {m.name for report, _ in results[1:] for m in report.measures if m.verdict == PASS}
        assert {"loudness", "collapse", "copy", "loop", "key", "silence"} <= judged, s
        if "ambient" not in s[0]:
            assert {"tempo", "beat_phase"} <= judged, s


def test_clean_song_with_sections_passes():
    """Intro (pads and hats) -> verse -> chorus -> bridge -> build: arrangement changes are not defects."""
    sections = [Section(0, "intro"), Section(30, "verse"), Section(66, "chorus"), Section(102, "bridge"),
                Section(138, "build up")]
    windows = procedural_song("indie pop", 118, "G major", 8, windows=10, sections=sections)
    bad = [f"window {i}: {m.name} {m.note}" for i, (r, _) in enumerate(run_song(windows, Expectation(118.0, "G major")))
           for m in r.measures if m.verdict == FAIL]
    assert not bad, "\n".join(bad)


def test_ground_truth_tempo_and_key_of_procedural_windows(clean_songs):
    tempo_ok = key_ok = exact = n = 0
    for (prompt, bpm, key, _), (_, results) in clean_songs.items():
        for report, feats in results:
            n += 1
            tempo_ok += "ambient" in prompt or tempo.octave_ratio(feats.bpm, bpm)[0] <= 0.04  # no drums: no pulse
            rel = keys.relation(keys.key_index(key), keys.key_index(feats.key))
            key_ok += rel in ("exact", "relative")
            exact += rel == "exact"
    assert tempo_ok == n
    assert key_ok >= 0.95 * n and exact >= 0.8 * n, (key_ok, exact, n)


# --- real recordings -------------------------------------------------------------------------------------------

def test_recorded_loops_tempo_within_4_percent():
    """sonic-pi-samples loops tiled to 18 s. Steered by their true tempo (as the gate steers by the request),
    within 4 % up to octaves (the gate's rule); steered 25 % off, the estimate does not follow; blind, within
    4 % up to octaves. Known miss: loop_mehackit1 (weak pulse, 0.15) steered reads 72.7 (3:4 of 97)."""
    misses = []
    for loop in gt.LOOPS:
        audio, sr = gt.read_sample(loop.name)
        truth = gt.loop_bpm(loop)
        onset = prepare(gt.tiled(audio, sr, 18.0), SR).onset
        steered, wrong, blind = (tempo.estimate(onset, r).bpm for r in (truth, 1.25 * truth, None))
        if tempo.octave_ratio(steered, truth)[0] > 0.04:
            misses.append((loop.name, truth, "steered", steered))
        if tempo.octave_ratio(wrong, 1.25 * truth)[0] <= 0.04:
            misses.append((loop.name, truth, "followed a wrong steer", wrong))
        if tempo.octave_ratio(blind, truth)[0] > 0.04:
            misses.append((loop.name, truth, "blind", blind))
    assert len(misses) <= 2 and {m[0] for m in misses} <= {"loop_mehackit1", "loop_tabla"}, misses


def test_recorded_guitar_key():
    """guit_em9 (an E minor 9 chord, as named) reads E minor. (guit_e_fifths is not used: its chroma peaks
    at F# and B, so its name does not settle a key.)"""
    audio, sr = gt.read_sample("guit_em9")
    c = keys.chroma(prepare(gt.tiled(audio, sr, 18.0), SR).mag)
    assert keys.key_name(int(np.argmax(keys.correlations(c)))) == "E minor"


@pytest.fixture(scope="module")
def rendered():
    """Four fluidsynth pieces (real sampled instruments) of 54 s and more, cut into 18 s windows."""
    out = []
    for tonic, mode, bpm, drums, lead, chords in ((0, "major", 70.0, True, "piano", "strings"),
                                                  (9, "minor", 128.0, True, "guitar", "organ"),
                                                  (6, "major", 100.0, False, "flute", "piano"),
                                                  (3, "minor", 150.0, True, "epiano", "strings")):
        bars = math.ceil(54 * bpm / 240)
        notes, progs = gt.piece(tonic, mode, bars=bars, drums=drums, lead=lead, chords=chords, seed=tonic)
        out.append((keys.key_name(tonic + (12 if mode == "minor" else 0)), bpm, drums, gt.render(notes, progs, bpm)))
    return out


def test_rendered_pieces_key_tempo_and_clean_pass(rendered):
    for key, bpm, drums, audio in rendered:
        part = 18 * SR
        history = []
        for w in range(3):
            report, feats = analyze(audio[:, w * part:(w + 1) * part], SR, w * part / SR, list(history),
                                    Expectation(bpm, key), TH)
            history.append(feats)
            assert feats.key == key, (key, w, report.facts)
            assert abs(feats.bpm / bpm - 1) <= 0.04, (key, bpm, feats.bpm)
            assert report.passed, (key, w, [m.note for m in report.measures if m.verdict == FAIL])


def test_rendered_piece_defects_caught(rendered):
    key, bpm, _, audio = rendered[1]
    part = 18 * SR
    _, first = analyze(audio[:, :part], SR, 0.0, [], Expectation(bpm, key), TH)
    whole = audio[:, : 2 * part]
    for fault, name in (("tempo", "tempo"), ("key", "key"), ("loop", "loop"), ("quiet", "loudness"),
                        ("drums", "collapse"), ("copy", "copy"), ("silence", "silence")):
        report, _ = analyze(inject(whole, part, fault, SR)[:, part:], SR, part / SR, [first], Expectation(bpm, key), TH)
        assert measure(report, name).verdict == FAIL, (fault, measure(report, name))


# --- each measure catches its defect ---------------------------------------------------------------------------

def test_pair_is_clean(pair):
    audio, start, *_ = pair
    report = judge(pair, audio[:, start:])
    assert report.passed, [m.note for m in report.measures if m.verdict == FAIL]
    assert all(m.verdict == PASS for m in report.measures), [(m.name, m.note) for m in report.measures]


def test_silence_and_dropouts(pair):
    audio, start, *_ = pair
    report = judge(pair, spoiled(pair, "silence"))
    assert measure(report, "silence").verdict == FAIL and "throughout" in measure(report, "silence").note
    new = audio[:, start:].copy()
    gap = new.copy()
    gap[:, 5 * SR:8 * SR] = 0.0  # 3 s dropout inside
    assert measure(judge(pair, gap), "silence").verdict == FAIL
    tail = new.copy()
    tail[:, -4 * SR:] = 0.0  # 4 s of silence at the end: an outro may ring out
    assert measure(judge(pair, tail), "silence").verdict == PASS
    tail[:, -12 * SR:] = 0.0
    assert measure(judge(pair, tail), "silence").verdict == FAIL


def test_tempo_jump_by_time_stretch_and_by_another_bpm(pair):
    report = judge(pair, spoiled(pair, "tempo"))
    assert measure(report, "tempo").verdict == FAIL
    other = procedural_song("driving synthwave", 129, "A minor", 7, windows=2)[1]  # +15 %
    report = judge(pair, other[1][:, other[2]:])
    assert measure(report, "tempo").verdict == FAIL, measure(report, "tempo")
    slow = procedural_song("driving synthwave", 56, "A minor", 7, windows=2)[1]  # half time agrees
    m = measure(judge(pair, slow[1][:, slow[2]:]), "tempo")
    assert m.verdict == PASS, m


def test_beat_phase_jump(pair):
    """Half a beat dropped at the start: same tempo, the grid moved."""
    audio, start, *_ = pair
    half = round(SR * 60 / 112 / 2)
    report = judge(pair, audio[:, start + half:])
    assert measure(report, "tempo").verdict == PASS
    assert measure(report, "beat_phase").verdict == FAIL, measure(report, "beat_phase")
    shifted = judge(pair, audio[:, start + half // 8:])  # 1/16 beat: within tolerance
    assert measure(shifted, "beat_phase").verdict == PASS


def test_key_change_by_pitch_shift_and_by_another_key(pair):
    assert measure(judge(pair, spoiled(pair, "key")), "key").verdict == FAIL
    audio, start, *_ = pair
    up2 = librosa.effects.pitch_shift(audio[:, start:], sr=SR, n_steps=2)
    assert measure(judge(pair, up2), "key").verdict == FAIL
    other = procedural_song("driving synthwave", 112, "Eb minor", 7, windows=2)[1]
    assert measure(judge(pair, other[1][:, other[2]:]), "key").verdict == FAIL


def test_relative_key_agrees_with_a_lower_score():
    windows = procedural_song("happy pop", 120, "C major", 9, windows=1)
    report, _ = analyze(windows[0][1], SR, 0.0, [], Expectation(120.0, "A minor"), TH)
    m = measure(report, "key")
    assert m.verdict == PASS and m.score <= TH.relative_key_score, m


def test_loop_of_one_and_a_half_seconds(pair):
    m = measure(judge(pair, spoiled(pair, "loop")), "loop")
    lag = float(re.search(r"every ([0-9.]+) s", m.note).group(1))
    assert m.verdict == FAIL and abs(lag - 1.5) < 0.03, m


def test_copy_of_earlier_material(pair):
    assert measure(judge(pair, spoiled(pair, "copy")), "copy").verdict == FAIL


def test_loudness_drop(pair):
    audio, start, *_ = pair
    new = audio[:, start:]
    quiet = judge(pair, new * 10 ** (-10 / 20))
    assert measure(quiet, "loudness").verdict == FAIL, measure(quiet, "loudness")
    assert judge(pair, new).facts["lufs"] - quiet.facts["lufs"] == pytest.approx(10.0, abs=0.01)
    assert measure(judge(pair, new * 10 ** (-3 / 20)), "loudness").verdict == PASS


def test_drums_only_is_a_collapse(pair):
    m = measure(judge(pair, spoiled(pair, "drums")), "collapse")
    assert m.verdict == FAIL, m


def test_clipping_nan_and_dc(pair):
    audio, start, *_ = pair
    new = audio[:, start:]
    loud = np.clip(new * 6.0, -1.0, 1.0)
    assert measure(judge(pair, loud), "clipping").verdict == FAIL
    nan = new.copy()
    nan[0, 1000:1100] = np.nan
    nan[1, 5000] = np.inf
    report = judge(pair, nan)
    assert measure(report, "nan").verdict == FAIL
    assert measure(report, "tempo").verdict == PASS  # the rest is still measured on the finite samples
    assert measure(judge(pair, new + 0.05), "dc").verdict == FAIL
    assert measure(judge(pair, new + 0.005), "dc").verdict == PASS


def test_window_zero_judges_only_against_the_request():
    windows = procedural_song("techno", 130, "G minor", 10, windows=1)
    report, feats = analyze(windows[0][1], SR, 0.0, [], Expectation(), TH)
    skipped = {m.name for m in report.measures if m.verdict == SKIPPED}
    assert {"tempo", "key", "loudness", "collapse", "copy", "beat_phase"} <= skipped
    assert report.passed and tempo.octave_ratio(feats.bpm, 130)[0] < 0.04


def test_short_last_part_is_not_judged_on_rhythm_or_repetition(pair):
    """A song's last window may add only a few seconds: no tempo, beat, key, loop or copy verdict on 3 s."""
    audio, start, *_ = pair
    report = judge(pair, audio[:, start:start + 3 * SR])
    assert report.passed, [m.note for m in report.measures if m.verdict == FAIL]
    assert {m.name for m in report.measures if m.verdict == SKIPPED} >= {"tempo", "beat_phase", "key", "loop", "copy"}


# --- loudness, features, speed ---------------------------------------------------------------------------------

def test_short_term_loudness_is_bs1770():
    """Each 3 s window's loudness equals pyloudnorm's ungated BS.1770 mean square over the same samples."""
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((2, 10 * SR)) * 0.05 * np.linspace(0.2, 1, 10 * SR)).astype(np.float32)
    short, _ = level.loudness_curves(audio, SR)
    meter = pyloudnorm.Meter(SR, block_size=3.0)
    for i in (0, 5, 14):
        block = audio[:, int(i * 0.5 * SR): int(i * 0.5 * SR) + 3 * SR]
        assert short[i] == pytest.approx(meter.integrated_loudness(block.T), abs=0.05)


def test_features_round_trip_and_size(pair):
    audio, start, start_s, history, expect = pair
    _, feats = analyze(audio[:, start:], SR, start_s, history, expect, TH)
    data = feats.to_bytes()
    assert 2_000 < len(data) < 100_000
    back = Features.from_bytes(data)
    for name in ("start_s", "duration_s", "bpm", "pulse", "lufs", "peaks", "flatness"):
        assert getattr(back, name) == pytest.approx(getattr(feats, name))
    assert back.key == feats.key
    for name in ("chroma", "short_term", "fingerprint", "beat_fold"):
        np.testing.assert_array_equal(getattr(back, name), getattr(feats, name))
    with pytest.raises(ValueError):
        Features.from_bytes(data[:40])


def test_analyze_speed_per_18_s_window(pair):
    audio, start, start_s, history, expect = pair
    new = audio[:, start:]
    assert math.isclose(new.shape[1] / SR, 18.0)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        analyze(new, SR, start_s, history * 9, expect, TH)
        times.append(time.perf_counter() - t0)
    print(f"analyze() of an 18 s part with 9 windows of history: {1000 * min(times):.0f} ms (best of 3)")
    assert min(times) < 0.5
