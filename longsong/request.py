"""The song request shared by client, CLI and workflow, and its validation.

Plain dataclasses (not pydantic) so the Temporal default converter carries them and the
workflow sandbox imports nothing heavy. `validate` is run twice: at submission (nothing is
started on bad input) and inside the workflow (a non-retryable failure).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace

from longsong.engines import ENGINE_NAMES

FORMATS = ("wav", "flac", "mp3", "opus")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEY_PATTERN = re.compile(r"^([A-Ga-g])([#b]?)\s*(major|minor|maj|min|m)?$", re.IGNORECASE)
MAX_SEGMENT_S = 30.0
MIN_SEGMENT_S = 10.0
MAX_SECTIONS = 32  # keeps the request (up to 32 x 500-character texts) well under a 64 KB payload


class InvalidRequest(ValueError):
    """A request field is out of range; the message is one line naming the field."""

    def __init__(self, field_name: str, problem: str):
        self.field = field_name
        super().__init__(f"{field_name}: {problem}")


@dataclass
class Sampling:
    """MusicGen's sampling settings (audiocraft's defaults); the request carries them flat."""

    temperature: float = 1.0
    top_k: int = 250  # 0: off
    top_p: float = 0.0  # 0 (audiocraft's "off") or >= 1: off
    cfg: float = 3.0  # classifier-free guidance scale; 1: none

    @classmethod
    def of(cls, req: "SongRequest") -> "Sampling":
        return cls(req.temperature, req.top_k, req.top_p, req.cfg)


@dataclass
class Section:
    """From `start_s` on (until the next section) the segments use `prompt` as section text."""

    start_s: float
    prompt: str


@dataclass
class SongRequest:
    prompt: str
    duration_s: float = 180.0
    genre: str | None = None
    bpm: int | None = None
    key: str | None = None
    mood: str | None = None
    sections: list[Section] = field(default_factory=list)
    seed: int | None = None
    engine: str = "procedural"
    model: str | None = None
    segment_s: float = 30.0
    overlap_s: float = 12.0
    crossfade_s: float = 2.0
    temperature: float = Sampling.temperature
    top_k: int = Sampling.top_k
    top_p: float = Sampling.top_p
    cfg: float = Sampling.cfg
    formats: list[str] = field(default_factory=lambda: ["mp3", "wav"])
    loudness_lufs: float = -14.0
    true_peak_dbtp: float = -1.0
    user_id: str = "anonymous"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _number(name: str, value: object, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    bounds = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not isinstance(value, int)
    ):
        raise InvalidRequest(name, f"must be {kind} {bounds}, got {value!r}")
    if value != value or value > hi or value < lo or (lo_open and value == lo):
        raise InvalidRequest(name, f"must be {bounds}, got {value!r}")


def _text(name: str, value: object, max_len: int, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(name, f"must be text of 1-{max_len} characters, got {value!r}")
    text = " ".join(value.split())
    if not text and not required:
        return None
    if not 1 <= len(text) <= max_len:
        raise InvalidRequest(
            name, f"must be 1-{max_len} characters after trimming, got {len(text)}")
    return text


def normalize_key(key: str) -> str:
    """'a min' / 'F#m' / 'Bb major' -> 'A minor' / 'F# minor' / 'Bb major'."""
    m = KEY_PATTERN.match(key.strip())
    if not m:
        raise InvalidRequest(
            "key", f"must be a note A-G with optional # or b and 'major' or 'minor' "
            f"(e.g. 'A minor', 'F# major'), got {key!r}")
    mode = (m.group(3) or "major").lower()
    return f"{m.group(1).upper()}{m.group(2)} {'major' if mode in ('major', 'maj') else 'minor'}"


def validate(req: SongRequest) -> SongRequest:
    """Check every field; return a normalized copy (trimmed texts, canonical key)."""
    prompt = _text("prompt", req.prompt, 2000, required=True)
    _number("duration_s", req.duration_s, 30, 600)
    genre = _text("genre", req.genre, 200, required=False)
    mood = _text("mood", req.mood, 200, required=False)
    if req.bpm is not None:
        _number("bpm", req.bpm, 40, 240, integer=True)
    key = normalize_key(req.key) if req.key not in (None, "") else None
    if req.seed is not None:
        _number("seed", req.seed, 0, 2**63 - 1, integer=True)
    if req.engine not in ENGINE_NAMES:
        raise InvalidRequest("engine", f"must be one of {', '.join(ENGINE_NAMES)}, got {req.engine!r}")
    if req.model is not None:
        _text("model", req.model, 500, required=True)
    _number("segment_s", req.segment_s, MIN_SEGMENT_S, MAX_SEGMENT_S)
    _number("overlap_s", req.overlap_s, 1, req.segment_s - 5)
    _number("crossfade_s", req.crossfade_s, 0.1, req.overlap_s)
    _number("temperature", req.temperature, 0, 10, lo_open=True)
    _number("top_k", req.top_k, 0, 2048, integer=True)
    _number("top_p", req.top_p, 0, 1)
    _number("cfg", req.cfg, 1, 20)
    if not isinstance(req.formats, (list, tuple)) or not req.formats:
        raise InvalidRequest("formats", f"must be a non-empty list of {', '.join(FORMATS)}")
    formats: list[str] = []
    for f in req.formats:
        if f not in FORMATS:
            raise InvalidRequest("formats", f"must each be one of {', '.join(FORMATS)}, got {f!r}")
        if f not in formats:
            formats.append(f)
    _number("loudness_lufs", req.loudness_lufs, -40, -5)
    _number("true_peak_dbtp", req.true_peak_dbtp, -9, 0)
    for name in ("user_id", "request_id"):
        value = getattr(req, name)
        if not isinstance(value, str) or not ID_PATTERN.match(value):
            raise InvalidRequest(name, f"must match [A-Za-z0-9_-]{{1,64}}, got {value!r}")
    sections = _sections(req.sections, req.duration_s)
    return replace(req, prompt=prompt, genre=genre, mood=mood, key=key, formats=formats,
                   sections=sections)


def _sections(sections: object, duration_s: float) -> list[Section]:
    if not isinstance(sections, (list, tuple)):
        raise InvalidRequest("sections", "must be a list of {start_s, prompt}")
    if len(sections) > MAX_SECTIONS:
        raise InvalidRequest("sections", f"at most {MAX_SECTIONS} sections, got {len(sections)}")
    out: list[Section] = []
    for i, s in enumerate(sections):
        if isinstance(s, dict):
            s = Section(**s)
        name = f"sections[{i}]"
        start = getattr(s, "start_s", None)
        _number(f"{name}.start_s", start, 0, duration_s)
        if start >= duration_s:
            raise InvalidRequest(f"{name}.start_s",
                                 f"must be < duration_s ({duration_s:g}), got {start!r}")
        if i == 0 and start != 0:
            raise InvalidRequest(f"{name}.start_s", f"the first section must start at 0, got {start!r}")
        if out and start <= out[-1].start_s:
            raise InvalidRequest(f"{name}.start_s", f"sections must be in ascending order of "
                                 f"start_s; {start!r} follows {out[-1].start_s!r}")
        out.append(Section(float(start), _text(f"{name}.prompt", s.prompt, 500, required=True)))
    return out
