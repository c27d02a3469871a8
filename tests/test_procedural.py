"""The procedural engine: deterministic, fast, follows the text, and continues windows exactly."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longsong.engines.base import EngineError, WindowRequest, WindowResult
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.procedural.song import NOTE_PC, SCALES
from longsong.plan import OUTRO_TEXT
from longsong.request import Sampling

SR = 32000
FRAME = 640
ENGINE = ProceduralEngine()


def window(text: str, seed: int = 1, n: int = 1500, context: int = 0, handoff: bytes | None = None,
           on_step=lambda done, total: None) -> WindowResult:
    return ENGINE.generate(WindowRequest(text, seed, n, context, Sampling(), handoff), on_step)


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def tempo_bpm(audio: np.ndarray, lo: float = 70, hi: float = 180) -> float:
    """Strongest period of the onset envelope (5 ms hops) between lo and hi bpm."""
    hop = 160
    mono = audio.mean(axis=0)
    frames = mono[: mono.size // hop * hop].reshape(-1, hop)
    flux = np.maximum(np.diff(np.log1p(100 * np.sqrt((frames**2).mean(axis=1)))), 0)
    flux -= flux.mean()
    ac = np.correlate(flux, flux, "full")[flux.size - 1:]
    rate = SR / hop
    lags = np.arange(round(rate * 60 / hi), round(rate * 60 / lo) + 1)
    return 60 * rate / lags[np.argmax(ac[lags])]


def scale_share(audio: np.ndarray, key: str) -> float:
    """Fraction of the 80-2000 Hz spectral energy on pitch classes of `key`'s scale."""
    mono = audio.mean(axis=0)
    power = np.abs(np.fft.rfft(mono)) ** 2
    freqs = np.fft.rfftfreq(mono.size, 1 / SR)
    band = (freqs > 80) & (freqs < 2000)
    pcs = (np.round(12 * np.log2(freqs[band] / 440)).astype(int) + 9) % 12
    chroma = np.bincount(pcs, weights=power[band], minlength=12)
    name, mode = key.split()
    tonic = (NOTE_PC[name[0]] + {"": 0, "#": 1, "b": -1}[name[1:]]) % 12
    return float(sum(chroma[(tonic + s) % 12] for s in SCALES[mode]) / chroma.sum())


def test_shape_dtype_and_attributes():
    r = window("120 bpm, A minor, house, dark")
    assert (ENGINE.name, ENGINE.model, ENGINE.sample_rate, ENGINE.channels) == ("procedural", "procedural-v1",
                                                                              SR, 2)
    assert r.audio.shape == (2, 1500 * FRAME) and r.audio.dtype == np.float32
    assert np.isfinite(r.audio).all()
    assert {"bpm", "key", "progression", "instruments", "section"} <= r.details.keys()
    assert all(isinstance(v, str) for v in r.details.values())
    assert (r.details["bpm"], r.details["key"], r.details["drums"]) == ("120", "A minor", "four")


def test_deterministic_and_seeded():
    a = window("pop, uplifting, chorus", seed=5)
    b = ProceduralEngine().generate(WindowRequest("pop, uplifting, chorus", 5, 1500, 0, Sampling(), None),
                                    lambda d, t: None)
    c = window("pop, uplifting, chorus", seed=6)
    assert np.array_equal(a.audio, b.audio) and a.handoff == b.handoff and a.details == b.details
    assert not np.array_equal(a.audio, c.audio)


def test_continuation_reproduces_the_context_exactly():
    w0 = window("118 bpm, D minor, techno, dark, chorus", seed=11)
    w1 = window("118 bpm, D minor, techno, dark, chorus", seed=12, context=600, handoff=w0.handoff)
    np.testing.assert_allclose(w1.audio[:, : 600 * FRAME], w0.audio[:, -600 * FRAME:], atol=1e-5)
    assert json.loads(w1.handoff)["end_frame"] == 1500 + 900
    w2 = window("118 bpm, D minor, techno, dark, chorus", seed=13, context=600, handoff=w1.handoff)
    np.testing.assert_allclose(w2.audio[:, : 600 * FRAME], w1.audio[:, -600 * FRAME:], atol=1e-5)
    assert w2.details["start_s"] == "36"


def test_section_change_starts_on_a_bar_line_in_the_new_part():
    w0 = window("120 bpm, house, intro")
    w1 = window("120 bpm, house, chorus", context=600, handoff=w0.handoff)
    np.testing.assert_allclose(w1.audio[:, : 600 * FRAME], w0.audio[:, -600 * FRAME:], atol=1e-5)
    assert (w0.details["section"], w1.details["section"]) == ("intro", "chorus")
    new_part = w1.audio[:, 600 * FRAME:]
    assert rms_db(new_part[:, 2 * SR:]) > rms_db(w1.audio[:, : 600 * FRAME]) + 3


def test_continuation_keeps_song_parameters_from_the_handoff():
    w0 = window("128 bpm, F# major, house, happy", seed=3)
    w1 = window("90 bpm, C minor, ambient, sad", seed=4, context=600, handoff=w0.handoff)
    assert {k: w1.details[k] for k in ("bpm", "key", "progression", "instruments", "song_seed")} == \
        {k: w0.details[k] for k in ("bpm", "key", "progression", "instruments", "song_seed")}
    np.testing.assert_allclose(w1.audio[:, : 600 * FRAME], w0.audio[:, -600 * FRAME:], atol=1e-5)


SECTIONS = ["", "intro", "verse", "build", "chorus", "bridge", OUTRO_TEXT, "guitar solo"]


@settings(max_examples=12, deadline=None)
@given(bpm=st.integers(40, 240), n=st.integers(200, 700), data=st.data(),
       sections=st.tuples(st.sampled_from(SECTIONS), st.sampled_from(SECTIONS)),
       genre=st.sampled_from(["house", "rock", "trap", "jazz", "ambient", "drum and bass", "lofi"]))
def test_continuation_is_exact_for_any_window(bpm, n, data, sections, genre):
    context = data.draw(st.integers(1, n - 1))
    w0 = window(f"{bpm} bpm, {genre}, {sections[0]}", seed=bpm, n=n)
    w1 = window(f"{bpm} bpm, {genre}, {sections[1]}", seed=n, n=n, context=context, handoff=w0.handoff)
    start = (n - context) * FRAME  # of window 1, on the song timeline
    overlap = context * FRAME
    for w in (w0, w1):  # a final cadence belongs to its own window's end: compare up to it
        if "final_cadence_s" in w.details:
            overlap = min(overlap, max(0, round(float(w.details["final_cadence_s"]) * SR) - start))
    np.testing.assert_allclose(w1.audio[:, :overlap], w0.audio[:, start:start + overlap], atol=1e-5)


@pytest.mark.parametrize("bpm", [96, 124, 140])
def test_tempo_follows_the_text(bpm):
    estimate = tempo_bpm(window(f"{bpm} bpm, house, verse", seed=bpm).audio)
    assert abs(estimate - bpm) / bpm < 0.03, estimate


def test_key_follows_the_text():
    c_major = window("ambient, C major", seed=2).audio
    f_sharp = window("ambient, F# major", seed=2).audio
    assert scale_share(c_major, "C major") > 0.95 and scale_share(f_sharp, "F# major") > 0.95
    assert scale_share(c_major, "F# major") < 0.6 and scale_share(f_sharp, "C major") < 0.6
    a_minor = window("house, A minor, dark", seed=2)
    assert a_minor.details["key"] == "A minor" and scale_share(a_minor.audio, "A minor") > 0.75


def test_genre_and_mood_choose_the_arrangement():
    house, ambient = window("house, happy"), window("ambient, sad")
    assert (house.details["drums"], ambient.details["drums"]) == ("four", "none")
    assert house.details["progression"].split()[0] == "I" and ambient.details["key"].endswith("minor")
    assert window("hip hop").details["drums"] == "halftime" and window("rock").details["drums"] == "backbeat"
    assert "lead=piano" in window("classical piano").details["instruments"]
    assert 72 <= float(window("lofi").details["bpm"]) <= 92  # a default tempo from the genre's range

    def cymbals(audio):  # share of the energy above 5 kHz: hats, shakers, crashes
        power = np.abs(np.fft.rfft(audio.mean(axis=0))) ** 2
        return power[int(5000 * audio.shape[1] / SR):].sum() / power.sum()

    assert cymbals(house.audio) > 0.002 > 10 * cymbals(ambient.audio)


def test_sections_change_the_arrangement_and_are_never_silent():
    levels = {}
    for section in ["intro", "verse", "chorus", "bridge", ""]:
        r = window(f"110 bpm, G major, pop, {section}".rstrip(", "), seed=9, n=500)
        levels[section] = rms_db(r.audio)
        peak = 20 * np.log10(np.abs(r.audio).max())
        assert -12 < peak < -3 and levels[section] > -30, (section, peak, levels[section])
    assert r.details["section"] == "full"
    assert levels["chorus"] > levels["intro"] + 4 and levels["chorus"] > levels["bridge"]


def test_outro_ends_in_a_fade_on_the_tonic():
    w0 = window("100 bpm, E minor, rock, verse", seed=4)
    w1 = window(f"100 bpm, E minor, rock, verse, {OUTRO_TEXT}", seed=5, context=600, handoff=w0.handoff)
    assert w1.details["section"] == "outro"
    assert rms_db(w1.audio[:, -FRAME:]) < rms_db(w1.audio) - 30
    held = w1.audio[:, -3 * SR:-2 * SR]  # the final tonic chord before the fade
    assert scale_share(held, "E minor") > 0.8


def test_progress_is_reported_and_cancellation_propagates():
    calls = []
    window("house", on_step=lambda done, total: calls.append((done, total)))
    assert len(calls) >= 5 and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        window("house", on_step=cancel)


def mutated(handoff: bytes, path: tuple, value) -> bytes:
    body = json.loads(handoff)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(body).encode()


def test_bad_handoff_and_bad_windows_are_engine_errors():
    good = window("house", n=300).handoff
    bad = [b"", b"not json", b"[]", b"{}", mutated(good, ("v",), 99), mutated(good, ("song", "bpm"), 1000),
           mutated(good, ("song", "bpm"), "fast"), mutated(good, ("song", "lead"), "theremin"),
           mutated(good, ("song", "key"), "H minor"), mutated(good, ("song", "progression"), "I XI"),
           mutated(good, ("sections",), [[3, "chorus"]]), mutated(good, ("sections",), [[0, "polka"]]),
           mutated(good, ("end_frame",), -5), good[:40]]
    for handoff in bad:
        with pytest.raises(EngineError, match="hand-off"):
            window("house", n=300, context=100, handoff=handoff)
    with pytest.raises(EngineError, match="context"):
        window("house", n=300, context=100)  # context without a hand-off
    with pytest.raises(EngineError, match="context"):
        window("house", n=100, context=100, handoff=good)
    with pytest.raises(EngineError, match="song start"):
        window("house", n=800, context=400, handoff=good)  # the previous window ended at frame 300
