"""Mastering: true-peak meter (against known values and ffmpeg), limiter (clicks, bass distortion), loudness,
the gain search on real music, the dual-mono rule and the gain cap."""

from __future__ import annotations

import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pyloudnorm
import pytest
from scipy import signal

from longsong.audio.limiter import limit_true_peak
from longsong.audio.loudness import integrated_loudness
from longsong.audio.encode import encode
from longsong.audio.mastering import MAX_PASSES, GainLimitError, SilentTrackError, apply_fade_out, master_track
from longsong.audio.true_peak import true_peak_dbtp

from groundtruth import mastering_set

SR = 32000


def db(x: float) -> float:
    return 20 * np.log10(x)


def music(seconds: float, seed: int, drive: float = 1.0, sr: int = SR) -> np.ndarray:
    """Stereo music-like test signal: chords of harmonic tones, a kick on every beat, a noise
    snare and hi-hat with sharp attacks, saturated (tanh) to make it dense. Spectrum tilts down
    like real music's; `drive` sets how crushed it is."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    out = np.zeros((2, t.size))
    for chord, root in enumerate((110.0, 146.83, 130.81, 164.81)):
        active = (t // 2).astype(int) % 4 == chord
        for f in root * np.array([1, 1.25, 1.5, 2]):
            for h in range(1, 10):
                phase = rng.uniform(0, 2 * np.pi, (2, 1))
                out[:, active] += 0.25 / h**1.5 * np.sin(2 * np.pi * f * h * t[active] + phase)
    beat_t = t % 0.5
    out += 1.2 * np.sin(2 * np.pi * (50 * beat_t + 2 * (1 - np.exp(-30 * beat_t)))) * np.exp(-12 * beat_t)
    noise = rng.standard_normal((2, t.size))
    snare = signal.sosfilt(signal.butter(2, 5000, fs=sr, output="sos"), noise, axis=-1)
    hat = signal.sosfilt(signal.butter(2, [6000, 12000], "band", fs=sr, output="sos"), noise, axis=-1)
    out += 0.8 * snare * np.exp(-20 * ((t + 0.5) % 1.0)) + 0.2 * hat * np.exp(-60 * (t % 0.25))
    return np.tanh(2 * drive * out / np.abs(out).max()).astype(np.float32)


def tapered(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """Half-second raised-cosine fades at both ends: an abrupt start would really overshoot."""
    n = sr // 2
    w = np.ones(x.shape[-1])
    w[:n] = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    w[-n:] = w[:n][::-1]
    return (x * w).astype(np.float32)


# --- true-peak meter -------------------------------------------------------------------

def test_sine_at_quarter_rate_with_45_degree_phase_reads_3_db_over_sample_peak():
    n = np.arange(SR)
    x = tapered(np.sin(np.pi / 2 * n + np.pi / 4)[None])
    assert db(np.abs(x).max()) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(x, SR) == pytest.approx(0.0, abs=0.1)


def test_low_frequency_sine_reads_its_sample_peak():
    x = tapered(0.5 * np.sin(2 * np.pi * 100 * np.arange(SR) / SR + 0.3)[None])
    assert true_peak_dbtp(x, SR) == pytest.approx(db(np.abs(x).max()), abs=0.01)


@pytest.mark.parametrize("freq", [997.0, 5000.0, 9000.0, 13000.0])
def test_sines_up_to_0_4_fs_read_their_amplitude_whatever_the_phase(freq):
    rng = np.random.default_rng(int(freq))
    t = np.arange(SR) / SR
    for phase in rng.uniform(0, 2 * np.pi, 4):
        x = tapered(0.8 * np.sin(2 * np.pi * freq * t + phase)[None])
        assert true_peak_dbtp(x, SR) == pytest.approx(db(0.8), abs=0.2)


def test_band_limited_square_wave_overshoots_its_samples_and_uses_the_loudest_channel():
    """A full-scale square wave sampled at 4 samples per period is +-1 at every sample, but the
    band-limited waveform through those samples (a sine at fs/4 of amplitude sqrt(2)) peaks
    at +3 dB: a sample-peak meter reads 0 dBFS."""
    square = np.tile(np.array([1, 1, -1, -1], np.float32), SR // 4)
    x = tapered(np.stack([0.1 * square, square]))
    assert true_peak_dbtp(x, SR) == pytest.approx(3.01, abs=0.1)


def test_silence_reads_minus_infinity():
    assert true_peak_dbtp(np.zeros((2, SR), np.float32), SR) == float("-inf")


# --- loudness ---------------------------------------------------------------------------

@pytest.mark.parametrize("sr", [32000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 5])
def test_integrated_loudness_equals_pyloudnorm(sr: int, channels: int) -> None:
    """Same value as pyloudnorm.Meter.integrated_loudness, including both gates: a quiet third
    (relative gate) and a stretch of digital silence (absolute gate), at a length that is no
    whole number of blocks."""
    x = np.concatenate([music(12.3, seed=sr + channels, sr=sr)] * 3, axis=0)[:channels]
    third = x.shape[1] // 3
    x[:, :third] *= 0.01
    x[:, third: third + sr] = 0.0
    expected = pyloudnorm.Meter(sr).integrated_loudness(np.ascontiguousarray(x.T))
    assert integrated_loudness(x, sr) == pytest.approx(expected, abs=1e-6)
    assert integrated_loudness(x.astype(np.float32), sr) == pytest.approx(expected, abs=1e-4)


def test_integrated_loudness_of_silence_is_minus_infinity() -> None:
    assert integrated_loudness(np.zeros((2, 2 * SR), np.float32), SR) == float("-inf")
    assert integrated_loudness(np.full((2, 2 * SR), 1e-6, np.float32), SR) == float("-inf")  # under -70


def test_integrated_loudness_rejects_too_short_audio() -> None:
    with pytest.raises(ValueError):
        integrated_loudness(np.zeros((2, SR // 10), np.float32), SR)


# --- limiter ---------------------------------------------------------------------------

def test_limiter_holds_the_ceiling_without_clicks():
    """A 200 Hz tone that swells smoothly from -20 dBFS to +10 dBFS: limited to -1 dBTP with no
    gain steps, so the second difference (a click detector) stays at the tone's own level."""
    t = np.arange(3 * SR) / SR
    swell = 0.1 + 3.0 / (1 + np.exp(-(t - 1.0) * 400))  # ~10 ms rise
    x = np.stack([swell * np.sin(2 * np.pi * 200 * t), 0.5 * swell * np.sin(2 * np.pi * 300 * t)])
    x = x.astype(np.float32)
    y, reduction = limit_true_peak(x, SR, -1.0)
    assert true_peak_dbtp(y, SR) <= -1.0
    assert reduction == pytest.approx(db(3.1) + 1.0, abs=0.3)
    assert np.abs(np.diff(y, 2)).max() <= np.abs(np.diff(x, 2)).max()
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(x)).max()


def test_limiter_catches_an_isolated_transient_with_lookahead():
    x = tapered(0.2 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)[None])
    x[0, SR // 2] = 1.5  # a single-sample spike: its intersample peak is above 1.5
    y, _ = limit_true_peak(x, SR, -1.0)
    assert true_peak_dbtp(y, SR) <= -1.0
    assert np.abs(y[0, : SR // 2 - SR // 100] - x[0, : SR // 2 - SR // 100]).max() < 1e-6


def test_limiter_leaves_audio_under_the_ceiling_untouched():
    x = music(2.0, seed=1) * np.float32(0.5)
    assert true_peak_dbtp(x, SR) < -1.0
    y, reduction = limit_true_peak(x, SR, -1.0)
    assert reduction == 0.0
    np.testing.assert_array_equal(y, x)


# --- fade, master ----------------------------------------------------------------------

def test_fade_out_is_smooth_and_ends_at_zero():
    x = np.ones((1, SR * 4), np.float32)
    y = apply_fade_out(x, SR, 1.5)
    np.testing.assert_array_equal(y[:, : SR * 4 - int(1.5 * SR)], 1.0)
    assert y[0, -1] == 0.0
    assert np.all(np.diff(y[0]) <= 0)
    assert np.abs(np.diff(y[0])).max() < 2 / (1.5 * SR)


@pytest.mark.parametrize("scale, drive", [(0.05, 0.4), (1.0, 1.0), (1.0, 3.0)])
def test_master_reaches_target_loudness_under_the_ceiling(scale, drive):
    x = music(12.0, seed=2, drive=drive) * np.float32(scale)
    y, report = master_track(x, SR, target_lufs=-14.0, ceiling_dbtp=-1.0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert integrated_loudness(y, SR) == pytest.approx(-14.0, abs=0.2)
    assert true_peak_dbtp(y, SR) <= -1.0  # the ceiling itself: a format's margin comes at delivery
    assert report.loudness_lufs == pytest.approx(integrated_loudness(y, SR))
    assert report.true_peak_dbtp == pytest.approx(true_peak_dbtp(y, SR))
    assert report.loudness_before_lufs == pytest.approx(integrated_loudness(apply_fade_out(x, SR, 1.2), SR))
    assert y[0, -1] == 0.0  # faded out (10 % of a 12 s track)


def test_master_gets_as_close_as_it_can_when_the_target_is_out_of_reach():
    """-3 LUFS under -1 dBTP is out of reach: the gain search pushes past the nominal gain, stops when more
    gain no longer buys loudness (well inside its bound), and keeps the closest pass."""
    x = music(8.0, seed=3, drive=1.0)
    y, report = master_track(x, SR, target_lufs=-3.0, ceiling_dbtp=-1.0)
    assert true_peak_dbtp(y, SR) <= -1.0
    assert report.loudness_lufs < -3.5
    nominal_db = -3.0 - report.loudness_before_lufs
    one_pass, _ = limit_true_peak(apply_fade_out(x, SR, 0.8) * np.float32(10 ** (nominal_db / 20)), SR, -1.0)
    assert report.gain_db > nominal_db
    assert report.loudness_lufs >= integrated_loudness(one_pass, SR)  # the closest pass is kept
    assert report.passes < MAX_PASSES


@pytest.mark.parametrize("audio", [np.zeros((2, SR * 5), np.float32),
                                   1e-6 * np.random.default_rng(0).standard_normal((2, SR * 5))])
def test_silent_or_near_silent_track_is_refused(audio):
    with pytest.raises(SilentTrackError, match="silent"):
        master_track(audio.astype(np.float32), SR)


def test_gain_is_capped_with_an_error_naming_the_setting():
    """Noise at -65 LUFS needs +51 dB to reach -14: refused under the default +30 dB cap, in one line that names
    the field, the gain needed and the setting; allowed when the cap is raised."""
    x = music(8.0, seed=4)
    x *= np.float32(10 ** ((-65 - integrated_loudness(x, SR)) / 20))
    with pytest.raises(GainLimitError) as e:
        master_track(x, SR, target_lufs=-14.0)
    assert str(e.value).startswith("loudness_lufs: reaching -14 LUFS needs +51.")
    assert "LONGSONG_MAX_GAIN_DB" in str(e.value) and "\n" not in str(e.value)
    y, report = master_track(x, SR, target_lufs=-14.0, max_gain_db=60)
    assert report.gain_db == pytest.approx(51.0, abs=0.3)


# --- on real music -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_music():
    return mastering_set(20.0)


@pytest.mark.parametrize("target", [-23, -20, -17, -14, -11, -9, -8])
def test_every_target_is_met_within_a_fifth_of_a_lu_on_real_music(real_music, target):
    for name, x in real_music.items():
        y, report = master_track(x, SR, target_lufs=target, ceiling_dbtp=-1.0)
        assert integrated_loudness(y, SR) == pytest.approx(target, abs=0.2), name
        assert true_peak_dbtp(y, SR) <= -1.0, name
        assert report.passes <= MAX_PASSES


def ffmpeg_ebur128(path, dualmono: bool = False) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) as ffmpeg's ebur128 filter reads them (one decimal)."""
    options = "peak=true" + (":dualmono=true" if dualmono else "")
    r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostats", "-hide_banner", "-i", str(path),
                        "-af", f"ebur128={options}", "-f", "null", "-"], capture_output=True, text=True, check=True)
    summary = r.stderr[r.stderr.rindex("Summary:"):]
    return (float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1)),
            float(re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary).group(1)))


def test_mono_plays_as_loud_as_stereo_at_the_same_target(real_music, tmp_path):
    """The dual-mono rule: a mono master at -14 reads -14 with ffmpeg's ebur128 dualmono=true (the channel as
    fed to both speakers), so its one-channel BS.1770 reading is 3.01 LU lower; the stereo master of the same
    music reads -14 as it is."""
    stereo = real_music["amen+garzul"]
    mono = stereo.mean(axis=0, keepdims=True)
    y_mono, report = master_track(mono, SR, target_lufs=-14.0)
    y_stereo, _ = master_track(stereo, SR, target_lufs=-14.0)
    assert report.loudness_lufs == pytest.approx(-14.0, abs=0.2)
    assert integrated_loudness(y_mono, SR) == pytest.approx(-14.0 - 3.01, abs=0.2)
    encode(y_mono, SR, "wav", tmp_path / "mono.wav", {})
    encode(y_stereo, SR, "wav", tmp_path / "stereo.wav", {})
    assert ffmpeg_ebur128(tmp_path / "mono.wav", dualmono=True)[0] == pytest.approx(-14.0, abs=0.25)
    assert ffmpeg_ebur128(tmp_path / "stereo.wav")[0] == pytest.approx(-14.0, abs=0.25)


def test_true_peak_meter_agrees_with_ffmpeg(real_music, tmp_path):
    """Our 4x true-peak meter against ffmpeg's ebur128=peak=true on real music, limited and not, and on
    intersample-peak test signals (ffmpeg prints one decimal)."""
    t = np.arange(SR * 2) / SR
    signals = {"quarter-rate sine at 45 degrees": tapered(0.5 * np.sin(np.pi / 2 * np.arange(2 * SR) + np.pi / 4)[None]),
               "9 kHz sine": tapered(0.7 * np.sin(2 * np.pi * 9000 * t)[None])}
    for name, x in real_music.items():
        signals[name] = x
        signals[f"{name}, mastered to -9"] = master_track(x, SR, target_lufs=-9.0)[0]
    for name, x in signals.items():
        encode(x, SR, "wav", tmp_path / "x.wav", {})
        assert true_peak_dbtp(x, SR) == pytest.approx(ffmpeg_ebur128(tmp_path / "x.wav")[1], abs=0.15), name


# --- limiter distortion ---------------------------------------------------------------------------------

def thd_n_db(y: np.ndarray, sr: int, freq: float) -> float:
    """THD+N: power of what is left after a least-squares fit of the fundamental (and DC), re the fundamental."""
    t = np.arange(y.size) / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fundamental = basis[:, :2] @ coef[:2]
    return 10 * np.log10(np.mean((y - basis @ coef) ** 2) / np.mean(fundamental**2))


@pytest.mark.parametrize("sr", [32000, 48000])
@pytest.mark.parametrize("freq", [25.0, 40.0, 80.0])
def test_limiter_keeps_a_bass_sine_clean(sr, freq):
    """40 Hz driven 6 dB over the ceiling: THD+N <= -60 dB once the limiter has settled (the reduction is held
    across the wave's peaks instead of riding its cycle; without that it read -40 dB)."""
    t = np.arange(4 * sr) / sr
    x = (10 ** ((-1.0 + 6.0) / 20) * np.sin(2 * np.pi * freq * t))[None].astype(np.float32)
    y, reduction = limit_true_peak(x, sr, -1.0)
    assert reduction == pytest.approx(6.0, abs=0.05)
    assert thd_n_db(y[0, sr:].astype(np.float64), sr, freq) <= -60.0
