"""Validation: every bad field gets one line naming the field and the allowed values."""

import pytest

from longsong.request import InvalidRequest, Section, SongRequest, validate


def test_defaults_are_valid_and_normalized():
    req = validate(SongRequest(prompt="  lofi   beat \n with rain ", key="f#m"))
    assert req.prompt == "lofi beat with rain"
    assert req.key == "F# minor"
    assert req.duration_s == 180 and req.formats == ["mp3", "wav"]
    assert len(req.request_id) == 32


@pytest.mark.parametrize("changes, field, allowed", [
    ({"prompt": "   "}, "prompt", "1-2000"),
    ({"prompt": "x" * 2001}, "prompt", "1-2000"),
    ({"duration_s": 29}, "duration_s", ">= 30 and <= 600"),
    ({"duration_s": 601}, "duration_s", "<= 600"),
    ({"duration_s": "long"}, "duration_s", "a number"),
    ({"bpm": 39}, "bpm", ">= 40 and <= 240"),
    ({"bpm": 120.5}, "bpm", "integer"),
    ({"key": "H minor"}, "key", "A-G"),
    ({"engine": "suno"}, "engine", "procedural, musicgen"),
    ({"segment_s": 31}, "segment_s", "<= 30"),
    ({"overlap_s": 26}, "overlap_s", "<= 25"),
    ({"overlap_s": 0.5}, "overlap_s", ">= 1"),
    ({"overlap_s": 30}, "overlap_s", "<= 25"),
    ({"crossfade_s": 13}, "crossfade_s", "<= 12"),
    ({"temperature": 0}, "temperature", "> 0"),
    ({"top_k": -1}, "top_k", ">= 0"),
    ({"top_p": 1.5}, "top_p", "<= 1"),
    ({"cfg": 0.5}, "cfg", ">= 1"),
    ({"formats": ["mp3", "aac"]}, "formats", "wav, flac, mp3, opus"),
    ({"formats": []}, "formats", "wav, flac, mp3, opus"),
    ({"loudness_lufs": 0}, "loudness_lufs", "<= -5"),
    ({"true_peak_dbtp": 1}, "true_peak_dbtp", "<= 0"),
    ({"user_id": "a b"}, "user_id", "[A-Za-z0-9_-]{1,64}"),
    ({"request_id": "x" * 65}, "request_id", "[A-Za-z0-9_-]{1,64}"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"sections": [Section(5, "intro")]}, "sections[0].start_s", "start at 0"),
    ({"sections": [Section(0, "intro"), Section(0, "verse")]}, "sections[1].start_s", "ascending"),
    ({"sections": [Section(0, "intro"), Section(200, "outro")]}, "sections[1].start_s", "180"),
    ({"sections": [Section(0, " ")]}, "sections[0].prompt", "1-500"),
    ({"sections": [Section(i, "x") for i in range(33)]}, "sections", "at most 32"),
])
def test_bad_fields_name_field_and_allowed_values(changes, field, allowed):
    with pytest.raises(InvalidRequest) as err:
        validate(SongRequest(**{"prompt": "ok", **changes}))
    msg = str(err.value)
    assert err.value.field == field
    assert msg.startswith(field + ":") and allowed in msg and "\n" not in msg


def test_sections_accept_dicts_and_keep_order():
    req = validate(SongRequest(prompt="p", sections=[{"start_s": 0, "prompt": "intro"},
                                                     {"start_s": 60, "prompt": "chorus"}]))
    assert [s.start_s for s in req.sections] == [0.0, 60.0]
