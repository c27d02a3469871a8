"""The procedural engine's takes: a continuation window's seed changes its new part (a re-roll or a regenerated
window sounds different) and never its context; the take timeline travels in the hand-off (version 2)."""

import json
import math

import numpy as np
import pytest

from longsong.engines.base import EngineError, WindowRequest, WindowResult
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.procedural.patterns import bar_events
from longsong.engines.procedural.song import take_of
from longsong.engines.procedural.text import choose_song
from longsong.request import Sampling

FRAME = 640
CONTEXT = 600
ENGINE = ProceduralEngine()


def window(text: str, seed: int, n: int = 1500, context: int = 0, handoff: bytes | None = None) -> WindowResult:
    return ENGINE.generate(WindowRequest(text, seed, n, context, Sampling(), handoff), lambda done, total: None)


def as_v1(handoff: bytes) -> bytes:
    """The hand-off as the version-1 engine wrote it: no take timeline."""
    body = json.loads(handoff)
    body["v"] = 1
    del body["takes"]
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def with_takes(handoff: bytes, takes) -> bytes:
    body = json.loads(handoff)
    body["takes"] = takes
    return json.dumps(body).encode()


@pytest.mark.parametrize("text", ["124 bpm, house, chorus", "jazz trio", "trap, verse"])
def test_a_reroll_keeps_the_context_and_changes_the_new_part(text):
    w0 = window(text, seed=3)
    a = window(text, seed=40, context=CONTEXT, handoff=w0.handoff)
    b = window(text, seed=41, context=CONTEXT, handoff=w0.handoff)
    tail = w0.audio[:, -CONTEXT * FRAME:]
    for w in (a, b):
        np.testing.assert_allclose(w.audio[:, : CONTEXT * FRAME], tail, atol=1e-5)
    new_a, new_b = a.audio[:, CONTEXT * FRAME:], b.audio[:, CONTEXT * FRAME:]
    assert np.corrcoef(new_a.ravel(), new_b.ravel())[0, 1] < 0.9
    assert np.sqrt(np.mean((new_a - new_b) ** 2)) > 0.3 * np.sqrt(np.mean(new_a**2))
    assert (a.details["take_seed"], b.details["take_seed"]) == ("40", "41")


def test_the_same_seed_twice_is_bit_identical():
    w0 = window("118 bpm, D minor, techno, dark", seed=11)
    a = window("118 bpm, D minor, techno, dark", seed=12, context=CONTEXT, handoff=w0.handoff)
    b = ProceduralEngine().generate(WindowRequest("118 bpm, D minor, techno, dark", 12, 1500, CONTEXT, Sampling(),
                                                  w0.handoff), lambda done, total: None)
    assert np.array_equal(a.audio, b.audio) and a.handoff == b.handoff and a.details == b.details


def test_the_take_timeline_starts_at_the_first_bar_line_of_the_new_part():
    text = "120 bpm, house, verse"
    w0 = window(text, seed=1, n=1530)
    assert json.loads(w0.handoff)["takes"] == [] and "take_seed" not in w0.details
    w1 = window(text, seed=7, context=CONTEXT, handoff=w0.handoff)
    bar_frames = 100  # 120 bpm: one 4/4 bar is 2 s = 100 frames
    first = math.ceil(1530 / bar_frames)
    assert json.loads(w1.handoff)["takes"] == [[first, 7]]
    same = window(text, seed=7, context=CONTEXT, handoff=w1.handoff)  # the same seed continues its take
    assert json.loads(same.handoff)["takes"] == [[first, 7]]
    other = window(text, seed=8, context=CONTEXT, handoff=w1.handoff)
    assert json.loads(other.handoff)["takes"] == [[first, 7], [math.ceil((1530 + 900) / bar_frames), 8]]
    for w in (same, other):  # a window of a later take re-renders the earlier take's tail exactly
        np.testing.assert_allclose(w.audio[:, : CONTEXT * FRAME], w1.audio[:, -CONTEXT * FRAME:], atol=1e-5)


def test_regenerating_from_a_later_window_keeps_every_earlier_take():
    text = "rock, chorus"
    w0 = window(text, seed=2)
    w1 = window(text, seed=20, context=CONTEXT, handoff=w0.handoff)
    a = window(text, seed=30, context=CONTEXT, handoff=w1.handoff)
    b = window(text, seed=31, context=CONTEXT, handoff=w1.handoff)
    for w in (a, b):
        np.testing.assert_allclose(w.audio[:, : CONTEXT * FRAME], w1.audio[:, -CONTEXT * FRAME:], atol=1e-5)
    assert np.corrcoef(a.audio[:, CONTEXT * FRAME:].ravel(), b.audio[:, CONTEXT * FRAME:].ravel())[0, 1] < 0.9


def test_a_take_changes_every_part_of_its_bars_and_no_other_bar():
    song = choose_song("124 bpm, house, chorus", 3)
    sections = ((0, "chorus"),)
    takes_a, takes_b = ((8, 40),), ((8, 41),)
    assert [take_of(takes_a, bar) for bar in (0, 7, 8, 99)] == [None, None, 40, 40]
    assert take_of(((4, 1), (9, 2)), 8) == 1 and take_of(((4, 1), (9, 2)), 9) == 2
    for bar in range(8):  # before the take: as window 0 rendered them
        assert bar_events(song, sections, bar, None, 10**12, takes_a) == bar_events(song, sections, bar, None, 10**12)
    changed = {role: 0 for role in ("drums", "bass", "pad", "lead", "arp")}
    for bar in range(8, 24):
        a, b = (bar_events(song, sections, bar, None, 10**12, t) for t in (takes_a, takes_b))
        for role in changed:
            changed[role] += [e for e in a if e.role == role] != [e for e in b if e.role == role]
    assert changed["lead"] >= 14 and all(n >= 8 for n in changed.values()), changed


def test_a_version_1_handoff_still_continues():
    text = "90 bpm, C minor, lofi"
    w0 = window(text, seed=4)
    old = as_v1(w0.handoff)
    assert json.loads(old)["v"] == 1 and "takes" not in json.loads(old)
    w1 = window(text, seed=5, context=CONTEXT, handoff=old)
    np.testing.assert_allclose(w1.audio[:, : CONTEXT * FRAME], w0.audio[:, -CONTEXT * FRAME:], atol=1e-5)
    assert w1.handoff == window(text, seed=5, context=CONTEXT, handoff=w0.handoff).handoff
    body = json.loads(w1.handoff)
    assert body["v"] == 2 and [seed for _, seed in body["takes"]] == [5]


@pytest.mark.parametrize("takes", [[[-1, 5]], [[3, -2]], [[3, 1.5]], [[3, "7"]], [[3, True]], [[3, 2**63]],
                                   [[5, 1], [5, 2]], [[9, 1], [4, 2]], [[3]], [[3, 4, 5]], "3", None, 7,
                                   [{"bar": 3}]])
def test_bad_takes_are_refused_with_one_line(takes):
    good = window("house", seed=1, n=300).handoff
    with pytest.raises(EngineError, match="hand-off") as err:
        window("house", seed=2, n=300, context=100, handoff=with_takes(good, takes))
    assert "\n" not in str(err.value) and str(err.value).startswith("procedural: ")
    body = json.loads(good)
    del body["takes"]  # a version-2 hand-off must carry its timeline
    with pytest.raises(EngineError, match="hand-off"):
        window("house", seed=2, n=300, context=100, handoff=json.dumps(body).encode())
