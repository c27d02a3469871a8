"""The song request shared by client, CLI and workflow, and its validation.

Plain dataclasses (not pydantic) so the Temporal default converter carries them and the
workflow sandbox imports nothing heavy. `validate` is run twice: at submission (nothing is
started on bad input) and inside the workflow (a non-retryable failure).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, field, replace

from longsong.engines import ENGINE_NAMES

# Revision 2 (a patched workflow; revision 1 is kept for histories that replay through it): ids match
# as a whole string, texts reject control characters, ANSI escapes, lone surrogates and invisible-only
# values, and wrong types (key, sections) name the field instead of raising AttributeError/TypeError.
# Revision 3 (the quality-gate patch): max_rerolls, outro, parent_id and keep_windows are checked.
# Revision 4 (the service patch): callback_url (its form; the address policy is checked at submission and delivery).
# Revision 5 (the provenance patch): loudness_lufs -23..-8, the range mastering meets within 0.2 LU.
VALIDATION_REVISION = 5
LOUDNESS_RANGE = {4: (-40, -5), 5: (-23, -8)}  # by revision (4 and older: the first)
MAX_REROLLS = 5

FORMATS = ("wav", "flac", "mp3", "opus")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEY_PATTERN = re.compile(r"^([A-Ga-g])([#b]?)\s*(major|minor|maj|min|m)?$", re.IGNORECASE)
KEY_RULE = "must be a note A-G with optional # or b and 'major' or 'minor' (e.g. 'A minor', 'F# major')"
# C0, DEL, C1 controls and lone surrogates; prompts may hold tab and newline.
BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
BAD_CHARS_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_SEGMENT_S = 30.0
MIN_SEGMENT_S = 10.0
SECTION_KEYS = {"start_s", "prompt"}
MAX_SECTIONS = 32  # keeps the request (up to 32 x 500-character texts) well under a 64 KB payload


class InvalidRequest(ValueError):
    """A request field is out of range; the message is one line naming the field."""

    def __init__(self, field_name: str, problem: str):
        self.field = field_name
        super().__init__(f"{field_name}: " + "\\n".join(problem.splitlines()))  # always one line


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
    max_rerolls: int = 2  # quality gate: re-rolls of a failing window (0: no gate)
    outro: bool | None = None  # outro text on the last window: None as before (only without sections)
    parent_id: str | None = None  # extend/regenerate: the song whose first `keep_windows` windows are reused
    keep_windows: int | None = None
    callback_url: str | None = None  # POSTed a signed event when the song completes, fails or is cancelled


def _bound(x: float) -> str:
    """Bounds as written: 9223372036854775807 and 25, not 9.22337e+18 and 25.0."""
    return str(int(x)) if isinstance(x, int) or x.is_integer() else repr(x)


def _number(name: str, value: object, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not isinstance(value, int)
    ) or value != value or value > hi or value < lo or (lo_open and value == lo):
        raise InvalidRequest(name, f"must be {'an integer' if integer else 'a number'} "
                             f"{'>' if lo_open else '>='} {_bound(lo)} and <= {_bound(hi)}, got {value!r}")


def _characters(name: str, value: str, max_len: int, multiline: bool) -> None:
    """Revision 2: no control characters, ANSI escapes or lone surrogates; not only invisible characters."""
    allowed = "tab and newline are allowed" if multiline else "only printable characters, no tab or newline"
    bad = (BAD_CHARS_MULTILINE if multiline else BAD_CHARS).search(value)
    if bad:
        i, c = bad.start(), bad.group()
        if value.startswith("\x1b[", i):
            raise InvalidRequest(name, f"must not contain ANSI escape sequences (ESC[ at position {i}) or "
                                 f"other control characters; {allowed}")
        if "\ud800" <= c <= "\udfff":
            raise InvalidRequest(name, f"must be valid Unicode text, got a lone surrogate (U+{ord(c):04X} "
                                 f"at position {i})")
        raise InvalidRequest(name, f"must not contain control characters (U+{ord(c):04X} at position {i}); "
                             f"{allowed}")
    if value.strip() and not any(not c.isspace() and unicodedata.category(c) != "Cf" for c in value):
        raise InvalidRequest(name, f"must contain 1-{max_len} visible characters; zero-width, BOM, soft "
                             f"hyphen and other invisible format characters do not count")


def _text(name: str, value: object, max_len: int, *, required: bool, revision: int = 1,
          multiline: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(name, f"must be text of 1-{max_len} characters, got {value!r}")
    if revision >= 2:
        _characters(name, value, max_len, multiline)
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
        raise InvalidRequest("key", f"{KEY_RULE}, got {key!r}")
    mode = (m.group(3) or "major").lower()
    return f"{m.group(1).upper()}{m.group(2)} {'major' if mode in ('major', 'maj') else 'minor'}"


def validate(req: SongRequest, revision: int = VALIDATION_REVISION) -> SongRequest:
    """Check every field; return a normalized copy (trimmed texts, canonical key).

    `revision` 1 is the validation of workflows started before revision 2 (they replay through it)."""
    prompt = _text("prompt", req.prompt, 2000, required=True, revision=revision, multiline=True)
    _number("duration_s", req.duration_s, 30, 600)
    genre = _text("genre", req.genre, 200, required=False, revision=revision)
    mood = _text("mood", req.mood, 200, required=False, revision=revision)
    if req.bpm is not None:
        _number("bpm", req.bpm, 40, 240, integer=True)
    if revision >= 2 and not isinstance(req.key, (str, type(None))):
        raise InvalidRequest("key", f"{KEY_RULE}, got {req.key!r}")
    key = normalize_key(req.key) if req.key not in (None, "") else None
    if req.seed is not None:
        _number("seed", req.seed, 0, 2**63 - 1, integer=True)
    if req.engine not in ENGINE_NAMES:
        raise InvalidRequest("engine", f"must be one of {', '.join(ENGINE_NAMES)}, got {req.engine!r}")
    if req.model is not None:
        _text("model", req.model, 500, required=True, revision=revision)
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
    _number("loudness_lufs", req.loudness_lufs, *LOUDNESS_RANGE[5 if revision >= 5 else 4])
    _number("true_peak_dbtp", req.true_peak_dbtp, -9, 0)
    id_matches = ID_PATTERN.fullmatch if revision >= 2 else ID_PATTERN.match  # 1: "abc\n" passed
    for name in ("user_id", "request_id"):
        value = getattr(req, name)
        if not isinstance(value, str) or not id_matches(value):
            raise InvalidRequest(name, f"must match [A-Za-z0-9_-]{{1,64}}, got {value!r}")
    sections = _sections(req.sections, req.duration_s, revision)
    if revision >= 3:
        _derived(req)
    if revision >= 4 and req.callback_url is not None:
        check_callback_syntax(req.callback_url)
    return replace(req, prompt=prompt, genre=genre, mood=mood, key=key, formats=formats,
                   sections=sections)


CALLBACK_RULE = "an absolute https URL whose host resolves to public addresses only"
MAX_URL_LENGTH = 2000


def _callback(problem: str) -> InvalidRequest:
    return InvalidRequest("callback_url", f"{problem}; must be {CALLBACK_RULE}")


def check_callback_syntax(url: object) -> str:
    """callback_url's shape only, no DNS and no policy (safe in workflow code): an absolute http(s) URL with a
    host, at most 2000 characters, no user:password@ part, no whitespace or control characters. Which schemes
    and addresses are allowed is a deployment policy, checked with DNS by longsong.webhooks."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url:
        raise _callback("missing or not a string")
    if len(url) > MAX_URL_LENGTH:
        raise _callback(f"{len(url)} characters, over {MAX_URL_LENGTH}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise _callback("contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 literal
        raise _callback("not a well-formed URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _callback(f"scheme {parts.scheme!r} is not https" if parts.scheme else "not an absolute URL")
    if "@" in parts.netloc:
        raise _callback("credentials (user:password@) are not allowed in the URL")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise _callback("the port is not a number between 0 and 65535") from None
    if not parts.hostname:
        raise _callback("no host")
    return url


def problems(req: SongRequest, limit: int = 40) -> list[InvalidRequest]:
    """Every field's problem, not only the first (the HTTP API answers one message per field): validate,
    set the failing field back to its default, repeat. The messages are validate's own."""
    found: list[InvalidRequest] = []
    defaults = SongRequest(prompt="x")
    for _ in range(limit):
        try:
            validate(req)
            return found
        except InvalidRequest as e:
            found.append(e)
            name = e.field.split(".")[0].split("[")[0]
            if not hasattr(defaults, name) or getattr(req, name) == getattr(defaults, name):
                return found  # a cross-field rule the default does not settle: stop at it
            req = replace(req, **{name: getattr(defaults, name)})
    return found


def _derived(req: SongRequest) -> None:
    """Revision 3 fields: the gate and the parent reference (checked against the parent when loaded)."""
    _number("max_rerolls", req.max_rerolls, 0, MAX_REROLLS, integer=True)
    if not (req.outro is None or isinstance(req.outro, bool)):
        raise InvalidRequest("outro", f"must be true, false or null (as before: only without sections), "
                             f"got {req.outro!r}")
    if req.parent_id is None:
        if req.keep_windows is not None:
            raise InvalidRequest("keep_windows", "needs parent_id (the song whose windows are kept)")
        return
    if not isinstance(req.parent_id, str) or not ID_PATTERN.fullmatch(req.parent_id):
        raise InvalidRequest("parent_id", f"must match [A-Za-z0-9_-]{{1,64}}, got {req.parent_id!r}")
    if req.parent_id == req.request_id:
        raise InvalidRequest("parent_id", f"must name another song than this one ({req.request_id})")
    _number("keep_windows", req.keep_windows, 1, 64, integer=True)


def _sections(sections: object, duration_s: float, revision: int) -> list[Section]:
    if not isinstance(sections, (list, tuple)):
        raise InvalidRequest("sections", "must be a list of {start_s, prompt}")
    if len(sections) > MAX_SECTIONS:
        raise InvalidRequest("sections", f"at most {MAX_SECTIONS} sections, got {len(sections)}")
    out: list[Section] = []
    for i, s in enumerate(sections):
        name = f"sections[{i}]"
        if revision >= 2 and not (isinstance(s, Section) or isinstance(s, dict) and s.keys() == SECTION_KEYS):
            raise InvalidRequest(name, f"must be a Section or a {{start_s, prompt}} dict, got {s!r}")
        if isinstance(s, dict):
            s = Section(**s)
        start = getattr(s, "start_s", None)
        _number(f"{name}.start_s", start, 0, duration_s)
        if start >= duration_s:
            raise InvalidRequest(f"{name}.start_s",
                                 f"must be < duration_s ({_bound(duration_s)}), got {start!r}")
        if i == 0 and start != 0:
            raise InvalidRequest(f"{name}.start_s", f"the first section must start at 0, got {start!r}")
        if out and start <= out[-1].start_s:
            raise InvalidRequest(f"{name}.start_s", f"sections must be in ascending order of "
                                 f"start_s; {start!r} follows {out[-1].start_s!r}")
        out.append(Section(float(start), _text(f"{name}.prompt", s.prompt, 500, required=True, revision=revision,
                                               multiline=True)))
    return out
