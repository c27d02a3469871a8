"""The test fault engine: each defect changes the new part as intended and never the context."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from longsong.engines.base import WindowRequest
from longsong.engines.faults import FAULTS, FaultyEngine, inject
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import Sampling

SR = 32000
TEXT = "110 bpm, A minor, synthwave"
CONTEXT = 600
START = CONTEXT * SR // 50


def window(engine, index: int, reroll: int = 0, handoff: bytes | None = None):
    req = WindowRequest(text=TEXT, seed=1, n_frames=1500, context_frames=CONTEXT if handoff else 0,
                        sampling=Sampling(), handoff=handoff, index=index, reroll=reroll)
    return engine.generate(req, lambda done, total: None)


@pytest.fixture(scope="module")
def clean():
    """Window 1 of a procedural song: 12 s of context, then 18 s of new part."""
    engine = ProceduralEngine()
    return window(engine, 1, handoff=window(engine, 0).handoff).audio


@pytest.fixture(scope="module")
def spoiled(clean):
    return {name: inject(clean, START, name, SR) for name in FAULTS}


def mono(audio):
    return audio[:, START:].mean(axis=0)


def level_db(audio):
    return 10 * np.log10(np.mean(np.square(mono(audio), dtype=np.float64)))


def chroma(audio):
    # at A440, where the engines tune: librosa's tuning estimate (a numba gufunc) segfaulted in a fresh venv
    return librosa.feature.chroma_stft(y=mono(audio), sr=SR, tuning=0.0).mean(axis=1)


@pytest.mark.parametrize("name", list(FAULTS))
def test_context_is_bit_identical_and_new_part_changes(clean, spoiled, name):
    out = spoiled[name]
    assert out.shape == clean.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.array_equal(out[:, :START], clean[:, :START])
    assert not np.allclose(out[:, START:], clean[:, START:])


def test_silence(spoiled):
    assert level_db(spoiled["silence"]) < -60


def test_quiet(clean, spoiled):
    assert level_db(spoiled["quiet"]) - level_db(clean) == pytest.approx(-12, abs=0.5)


def test_tempo_jumps_by_a_quarter_and_keeps_the_level(clean, spoiled):
    def bpm(audio):
        return float(np.atleast_1d(librosa.beat.beat_track(y=mono(audio), sr=SR)[0])[0])

    ratio = bpm(spoiled["tempo"]) / bpm(clean)
    # the beat tracker may lock to half or double time: compare modulo an octave
    assert min(abs(ratio * 2.0**k - 1.25) for k in (-1, 0, 1)) < 0.05, ratio
    assert abs(level_db(spoiled["tempo"]) - level_db(clean)) < 1.5


def test_key_moves_the_tonic_by_a_tritone(clean, spoiled):
    before, after = chroma(clean), chroma(spoiled["key"])
    assert (int(after.argmax()) - int(before.argmax())) % 12 == 6
    assert np.corrcoef(np.roll(before, 6), after)[0, 1] > 0.8  # the same music, moved


def test_loop_repeats_one_short_stretch(spoiled):
    new = spoiled["loop"][:, START:]
    period = int(1.5 * SR)
    a, b = new[:, :-period].ravel(), new[:, period:].ravel()
    assert np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)) > 0.999


def test_drums_collapse_loses_tonal_content(clean, spoiled):
    def harmonic_share(audio):
        mag = np.abs(librosa.stft(mono(audio)))
        harmonic, _ = librosa.decompose.hpss(mag)
        return float(np.sum(harmonic**2) / np.sum(mag**2))

    assert harmonic_share(spoiled["drums"]) < 0.35 * harmonic_share(clean)
    assert abs(level_db(spoiled["drums"]) - level_db(clean)) < 3


def test_copy_replays_the_context_or_without_one_its_first_half(clean, spoiled):
    new = spoiled["copy"][:, START:]
    assert np.array_equal(new[:, :START], clean[:, :START])
    whole = inject(clean, 0, "copy", SR)  # a first window: no context to copy
    half = clean.shape[1] // 2
    assert np.array_equal(whole[:, half:], clean[:, :half])


def test_engine_spoils_only_the_chosen_windows_and_keeps_the_identity():
    inner = ProceduralEngine()
    engine = FaultyEngine(inner, {(1, 0): "quiet", (2, 1): "silence"})
    assert (engine.name, engine.model, engine.version, engine.sample_rate, engine.channels) == (
        inner.name, inner.model, inner.version, inner.sample_rate, inner.channels)
    assert EngineRegistry([engine]).get("procedural", None) is engine
    first = window(engine, 0)
    assert "fault" not in first.details
    bad, good = window(engine, 1, 0, first.handoff), window(inner, 1, 0, first.handoff)
    assert bad.details == {**good.details, "fault": "quiet"} and bad.handoff == good.handoff
    assert np.array_equal(bad.audio[:, :START], good.audio[:, :START])
    assert np.allclose(bad.audio[:, START:], good.audio[:, START:] * 10 ** (-12 / 20), atol=1e-6)
    rerolled = window(engine, 1, 1, first.handoff)  # the re-roll of a spoiled window comes out clean
    assert "fault" not in rerolled.details and np.array_equal(rerolled.audio, good.audio)


def test_bad_fault_names_are_refused_in_one_line():
    with pytest.raises(ValueError, match="^fault: 'noise' is not one of silence, tempo, key") as err:
        FaultyEngine(ProceduralEngine(), {(0, 0): "noise"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="two ints"):
        FaultyEngine(ProceduralEngine(), {0: "quiet"})  # type: ignore[dict-item]
