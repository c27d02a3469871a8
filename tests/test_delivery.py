"""Per-format delivery: every file's decoded true peak on the requested ceiling (within +0.1 / -0.3 dB) and its
loudness kept, for WAV, FLAC, MP3 and Opus, on real music, stereo and mono."""

from __future__ import annotations

import numpy as np
import pytest

from longsong.audio.delivery import FLOOR_DB, LOSSLESS, OVER_DB, deliver
from longsong.audio.encode import decode
from longsong.audio.mastering import master_track, playback_loudness
from longsong.audio.true_peak import true_peak_dbtp
from longsong.audio.watermark import embed

from groundtruth import mastering_set

SR = 32000
FORMATS = ("wav", "flac", "mp3", "opus")
KEY = b"delivery-test-key-0123456789abcd"


@pytest.fixture(scope="module")
def mastered():
    """The pipeline's order: master, watermark (which may lift a true peak by a hair), then deliver."""
    songs = mastering_set(15.0)
    songs["fluidr3 piece, mono"] = songs["fluidr3 piece"].mean(axis=0, keepdims=True)
    out = {}
    for target, ceiling in ((-14.0, -1.0), (-9.0, -1.0), (-11.0, -0.1)):
        for name, x in songs.items():
            y, _ = master_track(x, SR, target, ceiling)
            out[name, target, ceiling] = embed(y, SR, 0x1234ABCD, KEY)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_decoded_true_peak_sits_on_the_ceiling_and_loudness_is_kept(mastered, fmt, tmp_path):
    for (name, target, ceiling), audio in mastered.items():
        got = deliver(audio, SR, fmt, tmp_path / f"t.{fmt}", {"title": name}, ceiling)
        decoded, dsr = decode(got.path)
        peak = true_peak_dbtp(decoded, dsr)
        where = f"{name} at {target} LUFS / {ceiling} dBTP: decoded {peak:.2f} dBTP, margin {got.margin_db:.2f}"
        assert peak <= ceiling + OVER_DB, where
        if true_peak_dbtp(audio, SR) >= ceiling - FLOOR_DB:  # a master that reaches the ceiling is not pushed under
            assert peak >= ceiling - FLOOR_DB, where
        # the figures the manifest records were read from the piped copy (encoder delay and padding kept)
        assert got.true_peak_dbtp == pytest.approx(peak, abs=0.05), where
        assert got.loudness_lufs == pytest.approx(playback_loudness(decoded, dsr), abs=0.05), where
        assert playback_loudness(decoded, dsr) == pytest.approx(target, abs=0.2), where
        assert decoded.shape[0] == audio.shape[0]
        if fmt in LOSSLESS:
            assert got.margin_db == 0.0 and got.passes == 1


def test_a_master_under_the_ceiling_is_not_lifted_or_limited(mastered, tmp_path):
    """A quiet master (-23 LUFS, peaks well under the ceiling) goes out as it is: no margin search, no gain."""
    audio = mastered["mika", -14.0, -1.0] * np.float32(10 ** (-9 / 20))
    for fmt in FORMATS:
        got = deliver(audio, SR, fmt, tmp_path / f"q.{fmt}", {}, -1.0)
        assert got.passes == 1, fmt
        assert got.loudness_lufs == pytest.approx(playback_loudness(audio, SR), abs=0.1), fmt
        assert got.true_peak_dbtp < -1.0 - FLOOR_DB, fmt
