"""Encoding to the four delivery formats with the imageio-ffmpeg binary: round trips, metadata,
and clear failures that leave no partial files behind."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from longsong.audio import encode
from longsong.audio.encode import (
    AI_COMMENT,
    CONTENT_TYPES,
    EXTENSIONS,
    FfmpegError,
    FfmpegMissing,
    decode,
    ffmpeg_exe,
    read_tags,
)
from longsong.request import FORMATS

SR = 32000
TAGS = {
    "title": "Night drive",
    "comment": "AI-generated with longsong",
    "prompt": "lofi = beats; rain\nsecond line",
    "engine": "musicgen",
    "model": "facebook/musicgen-small",
    "request_id": "req-123",
}


@pytest.fixture(scope="module")
def stereo() -> np.ndarray:
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(0)
    tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 554 * t)]) * 0.4
    return (tone + 0.05 * rng.standard_normal(tone.shape)).astype(np.float32)


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 3000) -> float:
    """Highest normalised correlation of two mono signals over lags up to max_lag."""
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    spectrum = np.fft.rfft(a, 2 * n) * np.conj(np.fft.rfft(b, 2 * n))
    xcorr = np.fft.irfft(spectrum)
    lags = np.r_[xcorr[: max_lag + 1], xcorr[-max_lag:]]
    return float(lags.max() / np.sqrt((a**2).sum() * (b**2).sum()))


def test_formats_match_request_and_tables() -> None:
    assert set(EXTENSIONS) == set(CONTENT_TYPES) == set(FORMATS)
    assert EXTENSIONS["opus"] == "opus" and not any("." in ext for ext in EXTENSIONS.values())


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_lossless_round_trip_is_exact_to_24_bits(fmt: str, stereo: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / f"song.{EXTENSIONS[fmt]}"
    encode.encode(stereo, SR, fmt, path, TAGS)
    audio, sr = decode(path)
    assert sr == SR and audio.dtype == np.float32 and audio.shape == stereo.shape
    assert np.abs(audio - stereo).max() < 2.0**-22


@pytest.mark.parametrize("fmt, native_sr", [("mp3", SR), ("opus", 48000)])
def test_lossy_round_trip(fmt: str, native_sr: int, stereo: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / f"song.{EXTENSIONS[fmt]}"
    encode.encode(stereo, SR, fmt, path, TAGS)
    audio, sr = decode(path)
    assert sr == native_sr and audio.shape[0] == 2
    assert abs(audio.shape[1] - stereo.shape[1] * native_sr / SR) <= 2000  # codec padding
    resampled, sr = decode(path, sr=SR)
    assert sr == SR
    for ch in range(2):
        assert _best_correlation(resampled[ch], stereo[ch]) > 0.98


def test_mono_and_bitrate(tmp_path: Path) -> None:
    mono = (0.3 * np.random.default_rng(1).standard_normal((1, 10 * SR))).astype(np.float32)
    path = tmp_path / "mono.mp3"
    encode.encode(mono, SR, "mp3", path, {"title": "m"})
    audio, _ = decode(path)
    assert audio.shape[0] == 1
    assert path.stat().st_size == pytest.approx(320_000 / 8 * 10, rel=0.05)  # 320 kbps CBR


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_tags_land_in_container_metadata(fmt: str, stereo: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / f"tagged.{EXTENSIONS[fmt]}"
    encode.encode(stereo[:, : SR // 2], SR, fmt, path, TAGS)
    tags = read_tags(path)
    assert tags["title"] == TAGS["title"]
    if fmt == "wav":  # RIFF INFO has no free-form keys: they are kept in the comment
        assert tags["comment"].startswith(TAGS["comment"])
        for key in ("prompt", "engine", "model", "request_id"):
            assert f"{key}={TAGS[key]}" in tags["comment"]
    else:
        for key, value in TAGS.items():
            assert tags[key] == value


def test_comment_defaults_to_ai_disclosure(stereo: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "plain.flac"
    encode.encode(stereo[:, :SR], SR, "flac", path, {"title": "x"})
    assert read_tags(path)["comment"] == AI_COMMENT


def test_unknown_format(stereo: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format 'aac'; expected one of wav, flac, mp3, opus"):
        encode.encode(stereo, SR, "aac", tmp_path / "x.aac", {})
    assert list(tmp_path.iterdir()) == []


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, stereo: np.ndarray,
                                         tmp_path: Path) -> None:
    # imageio-ffmpeg returns IMAGEIO_FFMPEG_EXE without checking it exists
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-such-ffmpeg"))
    with pytest.raises(FfmpegMissing, match="pip install imageio-ffmpeg") as info:
        ffmpeg_exe()
    assert "\n" not in str(info.value)
    with pytest.raises(FfmpegMissing):
        encode.encode(stereo, SR, "mp3", tmp_path / "x.mp3", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("run", "message"), [
    (lambda audio, path: encode.encode(audio, SR, "flac", path.with_suffix(".flac"), {}),
     "^ffmpeg failed: Error: disk on fire$"),
    (lambda audio, path: encode.encode_and_decode(audio, SR, "mp3", path.with_suffix(".mp3"), {}),
     "^ffmpeg failed: encoder: Error: disk on fire; decoder: Error: disk on fire$"),
], ids=["encode", "encode_and_decode"])
def test_ffmpeg_failure_leaves_no_partial_file(run, message: str, monkeypatch: pytest.MonkeyPatch,
                                               stereo: np.ndarray, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    # Writes a partial output where ffmpeg would (a *.tmp argument, or the tee muxer's file before
    # "|"), then fails.
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in *"|"*) n="${a#*]}"; echo partial > "${n%%|*}";; '
                    '*.tmp) echo partial > "$a";; esac; done\n'
                    'cat > /dev/null\necho "Error: disk on fire" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FfmpegError, match=message):
        run(stereo, out / "song")
    assert list(out.iterdir()) == []


def test_decode_failure_names_ffmpeg_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "not-audio.mp3"
    bogus.write_bytes(b"this is not audio at all")
    with pytest.raises(FfmpegError, match="^ffmpeg failed: .+") as info:
        decode(bogus)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_encode_and_decode_gives_the_file_and_its_decoded_audio(fmt: str, stereo: np.ndarray,
                                                                tmp_path: Path) -> None:
    from longsong.audio.true_peak import true_peak_dbtp

    folder = tmp_path / "odd [name]|with:chars"  # the tee muxer's separators, in the folder name
    folder.mkdir()
    teed = folder / f"t.{EXTENSIONS[fmt]}"
    decoded, sr = encode.encode_and_decode(stereo, SR, fmt, teed, TAGS)
    separate = tmp_path / f"s.{EXTENSIONS[fmt]}"
    encode.encode(stereo, SR, fmt, separate, TAGS)
    reference, ref_sr = decode(separate)
    assert sorted(p.name for p in folder.iterdir()) == [teed.name]
    assert read_tags(teed) == read_tags(separate)
    if fmt == "mp3":
        assert teed.read_bytes() == separate.read_bytes()
    assert sr == ref_sr and decoded.shape[0] == 2
    # The piped copy lacks the Xing header, so it may keep encoder delay/padding (< 0.1 s).
    assert 0 <= decoded.shape[1] - reference.shape[1] < sr // 10
    assert true_peak_dbtp(decoded, sr) == pytest.approx(true_peak_dbtp(reference, sr), abs=0.01)
