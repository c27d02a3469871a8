"""Validation: every bad field gets one line naming the field and the allowed values."""

import pytest

from longsong.request import VALIDATION_REVISION, InvalidRequest, Section, SongRequest, problems, validate


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
    ({"loudness_lufs": -5}, "loudness_lufs", "<= -8"),
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


# Revision 2: what revision 1 let through (or crashed on) is now one line naming the field.

ANSI_RED = "\x1b[31mred\x1b[0m"


@pytest.mark.parametrize("changes, field, allowed", [
    ({"request_id": "abc\n"}, "request_id", "[A-Za-z0-9_-]{1,64}"),
    ({"user_id": "tester\n"}, "user_id", "[A-Za-z0-9_-]{1,64}"),
    ({"prompt": "warm\x00house"}, "prompt", "control characters (U+0000 at position 4); tab and newline are allowed"),
    ({"prompt": "warm\x7f"}, "prompt", "U+007F at position 4"),
    ({"prompt": "warm\x85"}, "prompt", "U+0085"),  # C1 (NEL): str.split() would have made it a space
    ({"prompt": "a\r\nb"}, "prompt", "U+000D"),
    ({"prompt": "ab" + ANSI_RED}, "prompt", "ANSI escape sequences (ESC[ at position 2)"),
    ({"prompt": "\x1bx"}, "prompt", "U+001B at position 0"),
    ({"prompt": "\u200b\u200d\ufeff \u2060\u00ad"}, "prompt", "1-2000 visible characters"),
    ({"prompt": "ab\udcff"}, "prompt", "lone surrogate (U+DCFF at position 2)"),
    ({"genre": "hip\nhop"}, "genre", "U+000A at position 3); only printable characters, no tab or newline"),
    ({"genre": "\u200b"}, "genre", "1-200 visible characters"),
    ({"mood": "dark\t"}, "mood", "U+0009"),
    ({"mood": ANSI_RED}, "mood", "ANSI escape"),
    ({"model": "facebook/\x00musicgen"}, "model", "U+0000"),
    ({"model": "\ufeff"}, "model", "1-500 visible characters"),
    ({"sections": [Section(0, "in\x1b[2Jtro")]}, "sections[0].prompt", "ANSI escape"),
    ({"sections": [Section(0, "\u200b")]}, "sections[0].prompt", "1-500 visible characters"),
    ({"key": 123}, "key", "A-G"),
    ({"key": ["A"]}, "key", "A-G"),
    ({"sections": [{"start": 0}]}, "sections[0]", "{start_s, prompt}"),
    ({"sections": [{"start_s": 0, "prompt": "a", "bars": 4}]}, "sections[0]", "{start_s, prompt}"),
    ({"sections": [("0", "x")]}, "sections[0]", "{start_s, prompt}"),
    ({"sections": ["intro"]}, "sections[0]", "{start_s, prompt}"),
])
def test_revision_2_rejects(changes, field, allowed):
    with pytest.raises(InvalidRequest) as err:
        validate(SongRequest(**{"prompt": "ok", **changes}))
    msg = str(err.value)
    assert err.value.field == field
    assert msg.startswith(field + ":") and allowed in msg and "\n" not in msg


@pytest.mark.parametrize("changes", [
    {"request_id": "abc\n"}, {"user_id": "tester\n"}, {"prompt": "warm\x00house"}, {"prompt": "ab" + ANSI_RED},
    {"prompt": "\u200b"}, {"genre": "hip\nhop"}, {"mood": "\u200b"}, {"model": "m\x00"},
    {"sections": [Section(0, "in\x1b[2Jtro")]},
])
def test_revision_1_still_accepts_what_it_accepted(changes):
    req = SongRequest(**{"prompt": "ok", **changes})
    assert validate(req, revision=1).request_id == req.request_id  # replays of old histories see the same
    with pytest.raises(InvalidRequest):
        validate(req, revision=2)


@pytest.mark.parametrize("changes, error", [
    ({"key": 123}, AttributeError), ({"sections": [{"start": 0}]}, TypeError),
])
def test_revision_1_keeps_its_crashes(changes, error):
    with pytest.raises(error):
        validate(SongRequest(**{"prompt": "ok", **changes}), revision=1)


def test_default_is_the_newest_revision():
    assert VALIDATION_REVISION == 5
    with pytest.raises(InvalidRequest, match="request_id"):
        validate(SongRequest(prompt="ok", request_id="abc\n"))


def test_revision_2_keeps_what_is_allowed():
    req = validate(SongRequest(prompt="warm\thouse\nwith rain \u200bé", genre="  ", mood="", key="",
                               model="facebook/musicgen-small",
                               sections=[Section(0, "intro\n\tsoft"), {"start_s": 30, "prompt": "drop"}]))
    assert req.prompt == "warm house with rain \u200bé"  # visible text may carry an invisible character
    assert req.genre is None and req.mood is None and req.key is None  # blank optional texts stay "absent"
    assert [(s.start_s, s.prompt) for s in req.sections] == [(0.0, "intro soft"), (30.0, "drop")]


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, "seed: must be an integer >= 0 and <= 9223372036854775807, got -1"),
    ({"seed": 2**63}, "seed: must be an integer >= 0 and <= 9223372036854775807, got 9223372036854775808"),
    ({"overlap_s": 26}, "overlap_s: must be a number >= 1 and <= 25, got 26"),  # 30.0 - 5: no "25.0"
    ({"crossfade_s": 0.05}, "crossfade_s: must be a number >= 0.1 and <= 12, got 0.05"),
    ({"sections": [Section(0, "a"), Section(180, "b")]},
     "sections[1].start_s: must be < duration_s (180), got 180"),
])
def test_bounds_print_exactly(changes, message):
    for revision in (1, 2):
        with pytest.raises(InvalidRequest) as err:
            validate(SongRequest(**{"prompt": "ok", **changes}), revision=revision)
        assert str(err.value) == message


def test_message_is_one_line_even_for_a_multiline_repr():
    class Odd:
        def __repr__(self):
            return "odd\nvalue"

    err = InvalidRequest("duration_s", f"must be a number, got {Odd()!r}")
    assert str(err) == "duration_s: must be a number, got odd\\nvalue"


@pytest.mark.parametrize("url", ["ftp://host/x", "/relative", "https://", "https://user:pw@host/x", "https://h:99999/",
                                 "https://host/a b", "https://" + "a" * 2000 + ".com", 42])
def test_revision_4_checks_callback_url_form(url):
    with pytest.raises(InvalidRequest, match="^callback_url: "):
        validate(SongRequest(prompt="ok", callback_url=url))
    assert validate(SongRequest(prompt="ok", callback_url=url), revision=3).callback_url == url  # older songs


def test_problems_lists_every_field_with_validate_messages():
    req = SongRequest(prompt="", duration_s=5, bpm="x", formats=["ogg"], seed=-1)
    found = problems(req)
    assert [e.field for e in found] == ["prompt", "duration_s", "bpm", "seed", "formats"]
    for e in found:
        with pytest.raises(InvalidRequest) as one:
            validate(SongRequest(**{"prompt": "ok", e.field: getattr(req, e.field)}))
        assert str(one.value) == str(e)
    assert problems(SongRequest(prompt="fine")) == []


def test_revision_5_bounds_loudness_to_what_mastering_meets():
    for lufs in (-23, -8, -14.5):
        assert validate(SongRequest(prompt="ok", loudness_lufs=lufs)).loudness_lufs == lufs
    for lufs in (-23.1, -7.9, -40, -5):
        with pytest.raises(InvalidRequest, match=r"^loudness_lufs: must be a number >= -23 and <= -8"):
            validate(SongRequest(prompt="ok", loudness_lufs=lufs))
    assert validate(SongRequest(prompt="ok", loudness_lufs=-30), revision=4).loudness_lufs == -30  # older songs
