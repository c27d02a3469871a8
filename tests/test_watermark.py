"""Watermark: the id survives the stored 24-bit WAV and the lossy deliveries, is bound to the key,
stays inaudible (SNR, loudness, true peak), and unmarked audio is not flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from scipy import signal

import soxr

from longsong.audio import encode, watermark, watermark_v1
from longsong.audio.mastering import master_track
from longsong.audio.watermark import Detection, detect, embed

from groundtruth import mastering_set

SR = 32000
KEY = b"test-watermark-key"
TRACK_ID = 0xC0FFEE42


def music(seconds: float, channels: int, seed: int) -> np.ndarray:
    """Music-like test signal: overlapping harmonic notes (11 partials, from a wavetable) with
    decays plus noise-burst drums, peak-normalised to -1 dBFS."""
    rng = np.random.default_rng(seed)
    phase = np.arange(4096) / 4096
    table = sum(np.sin(2 * np.pi * k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12))
    n = int(seconds * SR)
    out = np.zeros((channels, n))
    start = 0.0
    while start < seconds:
        length = rng.uniform(0.2, 0.8)
        i0, m = int(start * SR), int(min(1.5 * length, seconds - start) * SR)
        t = np.arange(m) / SR
        env = np.exp(-t / rng.uniform(0.1, 0.6)) * (1 - np.exp(-t / 0.005))
        for _ in range(rng.integers(1, 4)):
            f0 = 110 * 2 ** (rng.integers(0, 36) / 12)  # up to 830 Hz: partials stay below 10 kHz
            tone = table[(f0 * t * 4096).astype(np.int64) % 4096]
            out[:, i0 : i0 + m] += rng.uniform(0.2, 0.8, (channels, 1)) * 0.2 * env * tone
        start += length
    for beat in np.arange(0, seconds - 0.3, 0.5):
        i0, m = int(beat * SR), int(0.25 * SR)
        burst = rng.standard_normal((channels, m)) * np.exp(-np.arange(m) / SR / rng.choice([0.02, 0.06]))
        out[:, i0 : i0 + m] += 0.3 * (np.diff(burst, axis=1, prepend=0) if rng.random() < 0.5 else burst)
    return (out * 0.89 / np.abs(out).max()).astype(np.float32)


def true_peak_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.abs(signal.resample_poly(audio, 4, 1, axis=-1)).max()))


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return music(60, 2, seed=1)


@pytest.fixture(scope="module")
def marked(original: np.ndarray) -> np.ndarray:
    return embed(original, SR, TRACK_ID, KEY)


def _through(fmt: str, audio: np.ndarray, folder: Path) -> tuple[np.ndarray, int]:
    path = folder / f"marked.{encode.EXTENSIONS[fmt]}"
    encode.encode(audio, SR, fmt, path, {"title": "wm"})
    return encode.decode(path)


def test_round_trip_in_memory(marked: np.ndarray) -> None:
    assert marked.dtype == np.float32
    result = detect(marked, SR, KEY)
    assert (result.found, result.track_id, result.confidence) == (True, TRACK_ID, pytest.approx(1.0, abs=1e-6))
    assert [(m.track_id, m.speed) for m in result.marks] == [(TRACK_ID, 1.0)]
    assert [(s.start_s, s.end_s) for s in result.marks[0].spans] == [(0.0, 60.0)]


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus"])
def test_survives_delivery_formats(fmt: str, marked: np.ndarray, tmp_path: Path) -> None:
    audio, sr = _through(fmt, marked, tmp_path)
    result = detect(audio, sr, KEY)
    assert result.found and result.track_id == TRACK_ID and result.confidence > 0.999


def test_unknown_offset_and_excerpt(marked: np.ndarray, tmp_path: Path) -> None:
    audio, sr = _through("mp3", marked, tmp_path)
    shifted = np.concatenate([np.zeros((2, 1105), np.float32), audio], axis=1)  # undelayed decoder
    assert detect(shifted, sr, KEY).track_id == TRACK_ID
    excerpt = audio[:, 17 * sr + 333 : 47 * sr]
    assert detect(excerpt, sr, KEY).track_id == TRACK_ID


def test_mono_and_other_rates() -> None:
    mono = music(30, 1, seed=2)
    assert detect(embed(mono, SR, 7, KEY), SR, KEY).track_id == 7
    at_44k = signal.resample_poly(mono, 441, 320, axis=-1).astype(np.float32)
    marked_44k = embed(at_44k, 44100, 8, KEY)
    assert detect(marked_44k, 44100, KEY).track_id == 8
    assert detect(signal.resample_poly(marked_44k, 160, 147, axis=-1), 48000, KEY).track_id == 8


@pytest.mark.parametrize("track_id", [0, 1, 2**31, 2**32 - 1, 0x5A5A1234])
def test_ids_recovered(track_id: int, original: np.ndarray) -> None:
    excerpt = original[:, 30 * SR : 50 * SR]
    assert detect(embed(excerpt, SR, track_id, KEY), SR, KEY).track_id == track_id


def test_wrong_key_finds_nothing(marked: np.ndarray) -> None:
    result = detect(marked, SR, b"another-key")
    assert not result.found and result.track_id is None


def test_unmarked_audio_is_not_flagged(original: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    candidates = [original, *(music(15, 1 + i % 2, seed=10 + i) for i in range(4)),
                  (0.1 * rng.standard_normal((2, 20 * SR))).astype(np.float32),
                  np.zeros((2, 5 * SR), np.float32), np.zeros((1, 10), np.float32)]
    for audio in candidates:
        assert detect(audio, SR, KEY) == Detection(False, None, pytest.approx(0.0, abs=0.5), [])


def _tail(audio: np.ndarray, kind: str) -> np.ndarray:
    """The audio, then 20 s of silence or of its start faded out (an outro), or all of it a steady sound."""
    n = 20 * SR
    if kind == "silence":
        return np.concatenate([audio, np.zeros((2, n), np.float32)], axis=1)
    if kind == "fade":
        return np.concatenate([audio, audio[:, :n] * np.linspace(1, 0, n, dtype=np.float32) ** 2], axis=1)
    t = np.arange(audio.shape[1]) / SR
    steady = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 9)) + 0.05 * np.random.default_rng(5).standard_normal(t.size)
    return np.tile(0.3 * steady / np.abs(steady).max(), (2, 1)).astype(np.float32)


@pytest.mark.parametrize("kind", ["silence", "fade", "steady"])
def test_silence_fades_and_steady_sound_do_not_pass_for_a_sync(original: np.ndarray, kind: str) -> None:
    """Where the cells hold still, every bit's lattice phase sits at its dither in every repetition: read as
    is, all 512 block phases would agree (z of 10 to 30). Each bit is taken less its local mean, so unmarked
    audio stays at chance on every lattice and both half-hop shifts."""
    audio = _tail(original, kind)
    for lattice in watermark.READ:
        lay = watermark._layout(KEY, lattice.step_db)
        for shift in (0, watermark.HOP // 2):
            db = watermark.cell_db(watermark.band_frames(watermark.mid_power(audio[:, shift:])))
            assert watermark._scan(db, lay, 1.0).z.max() < watermark.SYNC_Z + 1.5
    assert not detect(audio, SR, KEY).found


@pytest.mark.parametrize("kind", ["fade", "steady"])
def test_another_keys_mark_is_not_read(original: np.ndarray, kind: str) -> None:
    """A mark repeats every block, so another key's scan sees that repetition as a sync too (z up to 30 on a
    steady sound), at phases off its own lattice: only the check bits stood between it and a wrong id, and
    Chase decoding tried 64 more candidates there. Such phases, whose sines agree as much as their cosines,
    are not read. Keys 46, 60 and 87 read a wrong id from the faded song before that."""
    marked = embed(_tail(original, kind), SR, TRACK_ID, KEY)
    for k in (46, 60, 87, 1, 2, 3):
        assert not detect(marked, SR, b"other-%d" % k).found, k
    assert detect(marked, SR, KEY).track_id == TRACK_ID


def test_inaudible(original: np.ndarray, marked: np.ndarray) -> None:
    diff = (marked - original).astype(np.float64)
    snr_db = 10 * np.log10(np.sum(original.astype(np.float64) ** 2) / np.sum(diff**2))
    assert snr_db >= 30.0
    meter = pyloudnorm.Meter(SR)
    assert abs(meter.integrated_loudness(marked.T) - meter.integrated_loudness(original.T)) < 0.1


@pytest.fixture(scope="module")
def real() -> list[np.ndarray]:
    """Real recorded music (sonic-pi loops, a FluidR3 render), mastered as the pipeline does."""
    return [master_track(x, SR, -14.0, -1.0)[0] for x in mastering_set(30.0).values()]


@pytest.mark.parametrize("speed", [1.02, 0.98, 1.0065])
def test_found_after_a_speed_change(real: list[np.ndarray], speed: float) -> None:
    """Played faster or slower by resampling (time and pitch move together): the detector searches the
    speed, reports it, and reads the id (rates over many songs: benchmarks/watermark_robustness.py)."""
    for i in (2, 3):
        changed = soxr.resample(embed(real[i], SR, TRACK_ID + i, KEY).T, SR, SR / speed).T.astype(np.float32)
        result = detect(changed, SR, KEY)
        assert result.track_id == TRACK_ID + i
        assert result.marks[0].speed == pytest.approx(speed, abs=2e-4)


def test_localises_the_marked_part(real: list[np.ndarray]) -> None:
    """15 s of a marked song, then 15 s of another, unmarked: the mark's spans cover the first part only.
    (Song 1 carries its mark well; 15 s of song 3, whose bands are mostly quiet, is read about 2 times in 3.)"""
    joined = np.concatenate([embed(real[1], SR, 77, KEY)[:, : 15 * SR], real[3][:, 15 * SR :]], axis=1)
    (mark,) = detect(joined, SR, KEY).marks
    assert mark.track_id == 77 and [(s.start_s, s.end_s) for s in mark.spans] == [(0.0, 15.0)]


def test_two_marks_mixed_from_the_same_start_are_both_read(real: list[np.ndarray]) -> None:
    """The pattern's start in the block is keyed by the id, so two marks mixed at the same start do not share
    a sync peak: the same recording marked with two ids and mixed (each mark then has half the band) gives
    both in a minute of it. (Two different songs mixed: each mark only shows where its song holds the band, so
    a 30 s excerpt rarely gives both; see the benchmark.)"""
    song = np.tile(real[3], 2)
    a, b = embed(song, SR, 1001, KEY), embed(song, SR, 1002, KEY)
    assert watermark._block_offset(1001, KEY) != watermark._block_offset(1002, KEY)
    assert sorted(m.track_id for m in detect(0.5 * (a + b), SR, KEY).marks) == [1001, 1002]


def test_true_peak_of_limited_master_kept() -> None:
    limited = np.tanh(6 * music(30, 2, seed=4))
    limited = (limited * 10 ** ((-1 - true_peak_db(limited)) / 20)).astype(np.float32)  # -1 dBTP
    marked = embed(limited, SR, TRACK_ID, KEY)
    assert true_peak_db(marked) - true_peak_db(limited) < 0.1
    assert detect(marked, SR, KEY).track_id == TRACK_ID


def test_rejects_ids_over_32_bits() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        embed(np.zeros((1, SR), np.float32), SR, 2**32, KEY)


def test_layout_is_keyed() -> None:
    a, b = watermark._layout(b"a"), watermark._layout(b"b")
    assert not np.array_equal(a.sign, b.sign) and np.array_equal(a.sign, watermark._layout(b"a").sign)


def test_short_crops_filters_and_downmix(real: list[np.ndarray]) -> None:
    """Any 5 s of a marked song, a 4 kHz low-pass and a mono downmix keep the id (band energies survive)."""
    marked = embed(real[0], SR, 4242, KEY)
    for start in (0.0, 7.3, 21.9):
        assert detect(marked[:, int(start * SR) : int((start + 5) * SR)], SR, KEY).track_id == 4242
    lowpassed = signal.sosfiltfilt(signal.butter(8, 4000, fs=SR, output="sos"), marked, axis=-1)
    assert detect(lowpassed.astype(np.float32), SR, KEY).track_id == 4242
    assert detect(marked.mean(axis=0, keepdims=True), SR, KEY).track_id == 4242


def test_mark_stays_under_the_music_in_every_second(real: list[np.ndarray]) -> None:
    for x in real:
        mark = embed(x, SR, 99, KEY) - x
        for k in range(0, x.shape[1] - SR + 1, SR // 2):
            music_power = np.square(x[:, k : k + SR], dtype=np.float64).sum()
            if music_power > 0:
                ratio_db = 10 * np.log10(np.square(mark[:, k : k + SR], dtype=np.float64).sum() / music_power)
                assert ratio_db <= watermark.GUARD_DB + 0.01  # the guard holds in every window, not on average


def test_marks_of_the_first_scheme_are_still_read(real: list[np.ndarray]) -> None:
    """Songs delivered before the band-energy scheme carry `watermark_v1`'s mark: detect still reads it."""
    old = watermark_v1.embed(real[3], SR, 31337, KEY)
    assert watermark.detect(old, SR, KEY).track_id == 31337


def test_marks_on_the_previous_lattice_are_still_read(real: list[np.ndarray]) -> None:
    """Songs marked before the lattice grew (step 1.0 dB, alpha 0.8) are read as before."""
    old = embed(real[3], SR, 4711, KEY, lattice=watermark.READ[1])
    assert watermark.READ[1] != watermark.LATTICE and detect(old, SR, KEY).track_id == 4711


def test_chase_decoding_flips_the_least_reliable_bits() -> None:
    """Two bits read wrong, both the least reliable: the check fails, Chase decoding finds the id, but only
    at a strong sync and when exactly one candidate agrees; a flip of a reliable bit is not tried."""
    bits = watermark._bits(TRACK_ID, KEY)
    spread = np.full(watermark.N_BITS, 2.0)
    soft = (1 - 2.0 * bits) * 6.0
    soft[[3, 40]] *= -0.05  # wrong, and barely
    assert watermark._id_of((soft < 0).astype(np.uint8), KEY) is None
    read = watermark._decode(soft, spread, watermark.LIST_Z + 1, KEY, True)
    assert read is not None and read[1] == TRACK_ID and read[2] == 1 + watermark.LIST_MAX
    assert np.array_equal(read[0], bits)
    assert watermark._decode(soft, spread, watermark.LIST_Z - 0.1, KEY, True) is None  # weak sync: no list
    assert watermark._decode(soft, spread, watermark.LIST_Z + 1, KEY, False) is None
    strong = soft.copy()
    strong[3] *= 40  # one wrong bit now read with confidence: it is not among the flips
    assert watermark._decode(strong, spread, watermark.LIST_Z + 1, KEY, True) is None
