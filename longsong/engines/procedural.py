"""Offline procedural engine: deterministic synthetic songs for the local demo and the tests.

Every sample is a pure function of the song parameters, the section timeline and the absolute
sample index on the song timeline: notes are events on an absolute 4/4 bar grid, drawn from
RNGs keyed by (song seed, bar, part), rendered whole from their own onset and summed in a fixed
order. A continuation window therefore re-generates its context region exactly as the previous
window ended it; a new section only starts at the first bar line of the window's new part.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np
from scipy import signal

from longsong.engines.base import EngineError, Progress, WindowRequest, WindowResult

SR = 32000
FRAME = SR // 50  # samples per 50 Hz frame
STEPS = 16  # sixteenth-note steps per 4/4 bar
HANDOFF_VERSION = 1
TABLE_BITS = 13  # wavetables of 8192 samples, read without interpolation (> 50 dB SNR)
TABLE = 2**TABLE_BITS
REVERB_DECIMATION = 4  # the reverb runs at SR / 4 (upsample4 interpolates back)
REVERB_PAD = int(1.5 * SR)  # reverb tail length = dry look-back before the window
MAX_TAIL_S = 3.0  # longest ring-out of a note after its bar (release, crash)
MIX_GAIN = 0.8  # bus sum -> soft-clip input: the loudest grooves reach about 0 dBFS there
MIX_GAIN_NO_DRUMS = 1.2  # without drum transients the same peaks leave room for more level
CEILING = 0.66  # soft-clip ceiling: peaks stay below -3.6 dBFS
FADE_S = 2.0

NOTE_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
CHORD_TONES = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "maj7": (0, 4, 7, 11),
               "min7": (0, 3, 7, 10), "dom7": (0, 4, 7, 10)}
ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii")
ROMAN_RE = re.compile(r"^(b?)(vii|vi|iv|v|iii|ii|i)(maj7|7|o)?$", re.IGNORECASE)
BPM_RE = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*bpm", re.IGNORECASE)
KEY_RE = re.compile(r"(?<![A-Za-z])([A-G])([#b]?)\s*(?i:(major|minor|maj|min))(?![A-Za-z])")


def words_re(words: tuple[str, ...]) -> re.Pattern[str]:
    """Whole-word alternation over lower-cased text, longest first so 'pre-chorus' beats 'chorus'."""
    alternation = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])({alternation})(?![a-z])")


@dataclass(frozen=True)
class Genre:
    name: str
    words: tuple[str, ...]
    drums: str  # drum pattern family
    bpm: tuple[int, int]  # default tempo range
    bass: tuple[str, ...]
    lead: tuple[str, ...]
    pad: tuple[str, ...]
    arp: tuple[str, ...]
    swing: float = 0.0  # delay of off-beat sixteenths, in steps


GENRES = (
    Genre("house", ("house", "disco", "dance", "club", "garage"), "four", (118, 126),
          ("saw", "fm"), ("pluck", "saw"), ("strings", "organ"), ("pluck",)),
    Genre("techno", ("techno", "trance", "edm", "electro", "rave", "electronic"), "four", (124, 136),
          ("saw", "square"), ("saw", "square"), ("strings", "warm"), ("pluck", "fm")),
    Genre("rock", ("rock", "punk", "metal", "grunge"), "backbeat", (100, 140),
          ("pluck", "saw"), ("saw", "square"), ("organ", "strings"), ("pluck",)),
    Genre("pop", ("pop", "indie", "synthwave", "funk", "soul", "r&b", "rnb", "country", "reggae", "blues"),
          "backbeat", (92, 122), ("pluck", "sub", "saw"), ("saw", "fm", "square"), ("warm", "strings"),
          ("pluck", "fm")),
    Genre("jazz", ("jazz", "swing", "bossa nova"), "backbeat", (90, 130),
          ("pluck",), ("fm", "sine"), ("warm", "organ"), ("fm",), 0.33),
    Genre("hip hop", ("hip hop", "hip-hop", "hiphop", "rap", "boom bap", "lofi", "lo-fi", "chillhop"),
          "halftime", (72, 92), ("sub", "fm"), ("fm", "sine", "pluck"), ("warm",), ("fm", "piano"), 0.3),
    Genre("trap", ("trap", "drill", "dubstep", "phonk"), "halftime", (130, 150),
          ("sub",), ("pluck", "square", "saw"), ("strings", "warm"), ("pluck", "fm")),
    Genre("drum and bass", ("drum and bass", "drum & bass", "drum n bass", "dnb", "jungle", "breakbeat",
                            "breaks"), "breakbeat", (165, 176), ("sub", "saw"), ("pluck", "saw"),
          ("strings",), ("pluck",)),
    Genre("ambient", ("ambient", "drone", "meditation", "new age", "chillout"), "none", (60, 84),
          ("sub",), ("sine", "fm"), ("warm", "strings"), ("fm", "piano")),
    Genre("classical", ("classical", "piano", "orchestral", "cinematic", "soundtrack", "score"), "none",
          (66, 100), ("sub",), ("piano",), ("strings", "piano"), ("piano",)),
)
DEFAULT_GENRES = ("pop", "house", "hip hop", "ambient")
GENRE_RE = {g.name: words_re(g.words) for g in GENRES}

INSTRUMENT_WORDS = (  # (words, role, instrument): explicit instruments override the genre's picks
    (("piano", "keys"), "lead", "piano"),
    (("rhodes", "electric piano", "bell", "bells", "vibraphone", "marimba"), "lead", "fm"),
    (("flute", "whistle", "ocarina"), "lead", "sine"),
    (("guitar", "harp"), "lead", "pluck"),
    (("synth lead", "supersaw", "synth"), "lead", "saw"),
    (("chiptune", "8-bit", "8bit"), "lead", "square"),
    (("strings", "violin", "orchestra", "orchestral", "cello"), "pad", "strings"),
    (("organ",), "pad", "organ"),
    (("808", "sub bass"), "bass", "sub"),
    (("acid", "303"), "bass", "saw"),
)
INSTRUMENT_RE = tuple((words_re(words), role, instrument) for words, role, instrument in INSTRUMENT_WORDS)

MOODS = (
    ("dark", ("dark", "ominous", "sinister", "tense", "aggressive", "angry", "menacing", "haunting",
              "eerie", "gritty")),
    ("sad", ("sad", "melancholic", "melancholy", "somber", "sombre", "nostalgic", "lonely", "emotional",
             "bittersweet", "moody", "gloomy")),
    ("happy", ("happy", "uplifting", "joyful", "cheerful", "bright", "euphoric", "upbeat", "energetic",
               "fun", "playful", "sunny", "triumphant")),
    ("calm", ("calm", "chill", "relaxed", "relaxing", "peaceful", "dreamy", "mellow", "soft", "gentle",
              "serene", "smooth", "laid-back", "laid back")),
    ("epic", ("epic", "heroic", "powerful", "anthemic", "grand")),
)
MOOD_RE = {name: words_re(ws) for name, ws in MOODS}
MOOD_MODE = {"dark": "minor", "sad": "minor", "happy": "major"}
PROGRESSIONS = {  # roman numerals, one chord per `bars_per_chord` bars
    ("major", "happy"): ("I V vi IV", "I IV V IV", "I vi IV V"),
    ("major", "sad"): ("vi IV I V", "I iii vi IV", "IV I V vi"),
    ("major", "calm"): ("Imaj7 IVmaj7 Imaj7 IVmaj7", "Imaj7 vi7 ii7 V7", "IVmaj7 iii7 ii7 Imaj7"),
    ("major", "dark"): ("I bVII IV I", "I bVI bVII I"),
    ("major", "epic"): ("I V vi IV", "vi IV I V", "I bVII IV I"),
    ("major", None): ("I V vi IV", "I vi IV V", "I IV vi V", "vi IV I V"),
    ("minor", "dark"): ("i VI III VII", "i iv VI V", "i VII VI V", "i i iv V"),
    ("minor", "sad"): ("i VI III VII", "i iv VII III", "i VI iv V"),
    ("minor", "calm"): ("i7 iv7 i7 v7", "i7 VImaj7 iv7 v7"),
    ("minor", "happy"): ("i VII VI VII", "i III VII IV"),
    ("minor", "epic"): ("i VI III VII", "i VII VI V"),
    ("minor", None): ("i VI III VII", "i iv VI V", "i VII VI VII", "i iv v i"),
}
CADENCE = {"major": "IV V I I", "minor": "iv V i i"}

SECTION_WORDS = {
    "build": ("pre-chorus", "prechorus", "pre chorus", "build-up", "buildup", "build up", "build", "riser"),
    "outro": ("final cadence", "fade out", "outro", "ending", "coda", "finale"),
    "intro": ("introduction", "intro", "opening"),
    "verse": ("verse",),
    "chorus": ("chorus", "hook", "refrain", "drop", "climax", "solo"),
    "bridge": ("breakdown", "bridge", "interlude", "break"),
}
SECTION_RE = words_re(tuple(w for ws in SECTION_WORDS.values() for w in ws))
SECTION_OF = {w: kind for kind, ws in SECTION_WORDS.items() for w in ws}
KINDS = ("full", "intro", "verse", "build", "chorus", "bridge", "outro")
DRUM_LEVEL = {"off": 0, "hats": 1, "groove": 2, "full": 3}


@dataclass(frozen=True)
class Arrangement:
    drums: str  # off, hats, groove, full
    bass: float
    pad: float
    lead: float
    arp: float


ARRANGEMENTS = {
    "full": Arrangement("full", 1.0, 0.8, 0.9, 0.0),
    "intro": Arrangement("hats", 0.0, 1.3, 0.0, 1.0),
    "verse": Arrangement("groove", 1.0, 0.7, 0.0, 0.8),
    "build": Arrangement("groove", 1.0, 0.9, 0.5, 1.0),
    "chorus": Arrangement("full", 1.0, 1.0, 1.0, 0.5),
    "bridge": Arrangement("hats", 0.8, 1.0, 0.7, 0.0),
    "outro": Arrangement("groove", 1.0, 1.0, 0.0, 0.6),
}

# Drum lines: (sound, 16-step pattern with x = hit and o = ghost, lowest drum level that plays it).
DRUM_LINES = {
    "four": (("kick", "x...x...x...x...", "groove"), ("clap", "....x.......x...", "groove"),
             ("hat", "..x...x...x...x.", "hats"), ("shaker", "oxoooxoooxoooxoo", "full")),
    "backbeat": (("kick", "x......ox.x.....", "groove"), ("snare", "....x.......x...", "groove"),
                 ("hat", "x.x.x.x.x.x.x.x.", "hats"), ("open", "..............x.", "full")),
    "halftime": (("kick", "x......x..x.....", "groove"), ("snare", "........x.......", "groove"),
                 ("hat", "x.x.x.x.x.x.x.x.", "hats"), ("hat", ".o.o.o.o.o.o.o.o", "full")),
    "breakbeat": (("kick", "x.........x.....", "groove"), ("snare", "....x.......x...", "groove"),
                  ("hat", "x.x.x.x.x.x.x.x.", "hats"), ("snare", ".......o.o....o.", "full")),
}
BASS_LINES = {"four": "..x...x...x...x.", "backbeat": "x.x.x.x.x.x.x.x.", "halftime": "x......x..x.....",
              "breakbeat": "x.........x.....", "none": "x..............."}
BASS_LEVEL = {"none": 0.5}  # without drums a sustained bass would dominate the mix
RHYTHMS = (  # lead rhythms: (step, length in steps)
    ((0, 3), (4, 2), (6, 2), (8, 4), (12, 4)),
    ((0, 2), (2, 2), (4, 4), (10, 2), (12, 4)),
    ((0, 6), (6, 2), (8, 6), (14, 2)),
    ((2, 2), (4, 2), (6, 4), (12, 2), (14, 2)),
    ((0, 4), (4, 4), (8, 8)),
    ((0, 2), (3, 3), (6, 2), (8, 2), (11, 5)),
)
MOVES = (-2, -1, -1, 0, 1, 1, 2, 3, -3)
PART_DRUMS, PART_BASS, PART_LEAD, PART_SONG = 1, 2, 3, 4
DRUM_GAIN = {"kick": 0.55, "snare": 0.32, "clap": 0.3, "hat": 0.14, "open": 0.11, "shaker": 0.08, "crash": 0.12}
ROLE_GAIN = {"bass": 0.32, "pad": 0.085, "lead": 0.16, "arp": 0.075}
ROLE_PAN = {"bass": 0.0, "pad": 0.0, "lead": 0.15, "arp": -0.35}
ROLE_BUS = {"drums": 0, "bass": 1, "pad": 2, "lead": 2, "arp": 2}
REVERB_SEND_DRUMS, REVERB_SEND_KEYS = 0.08, 0.45


DRAWBARS = {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.5, 6: 0.3, 8: 0.3}  # organ partial levels
SUB = {1: 1.0, 2: 0.3, 3: 0.08}  # sub bass partial levels


@dataclass(frozen=True)
class Timbre:
    shape: str  # wavetable: sine, sub, saw, square, tri, organ, piano
    bright: int  # partials at the note's start
    dark: int  # partials it settles to: a filter envelope by cross-fading two tables
    tone_decay: float  # seconds for the brightness (or FM index) to fall
    attack: float
    decay: float  # amplitude decay time constant, seconds
    sustain: float  # level the decay settles to
    release: float
    spread: float = 0.0  # cents of detune between left and right (0: mono, panned)
    vibrato: float = 0.0  # depth in cents, 5 Hz, fading in after 0.2 s
    fm: float = 0.0  # FM index at the onset (sine carrier and modulator, ratio 1); 0: wavetable


TIMBRES = {
    "bass:sub": Timbre("sub", 3, 3, 0.1, 0.004, math.inf, 1.0, 0.06),
    "bass:saw": Timbre("saw", 32, 5, 0.12, 0.003, 0.4, 0.7, 0.05),
    "bass:square": Timbre("square", 24, 5, 0.1, 0.003, 0.5, 0.7, 0.05),
    "bass:fm": Timbre("sine", 1, 1, 0.15, 0.003, 0.5, 0.6, 0.05, fm=2.5),
    "bass:pluck": Timbre("saw", 24, 4, 0.06, 0.003, 0.35, 0.3, 0.06),
    "lead:saw": Timbre("saw", 48, 14, 0.4, 0.01, 0.6, 0.75, 0.15, spread=14, vibrato=12),
    "lead:square": Timbre("square", 32, 10, 0.3, 0.008, 0.5, 0.7, 0.12, vibrato=10),
    "lead:pluck": Timbre("saw", 32, 3, 0.12, 0.003, 0.3, 0.0, 0.12),
    "lead:fm": Timbre("sine", 1, 1, 0.35, 0.004, 0.8, 0.15, 0.25, fm=1.8),
    "lead:sine": Timbre("tri", 4, 2, 0.5, 0.04, 1.0, 0.85, 0.15, vibrato=15),
    "lead:piano": Timbre("piano", 16, 3, 0.3, 0.003, 0.9, 0.0, 0.25),
    "pad:strings": Timbre("saw", 12, 12, 1.0, 0.35, 2.0, 0.8, 0.7, spread=12),
    "pad:warm": Timbre("tri", 6, 6, 1.0, 0.25, 2.0, 0.8, 0.6, spread=10),
    "pad:organ": Timbre("organ", 16, 16, 1.0, 0.01, math.inf, 1.0, 0.08, spread=6),
    "pad:piano": Timbre("piano", 12, 3, 0.4, 0.003, 1.2, 0.0, 0.4, spread=4),
    "arp:pluck": Timbre("saw", 24, 3, 0.08, 0.002, 0.18, 0.0, 0.08),
    "arp:fm": Timbre("sine", 1, 1, 0.2, 0.002, 0.4, 0.0, 0.1, fm=2.0),
    "arp:piano": Timbre("piano", 12, 3, 0.2, 0.003, 0.5, 0.0, 0.15),
}


@lru_cache(maxsize=64)
def parse_key(key: str) -> tuple[int, str]:
    """'F# minor' -> (6, 'minor'); KeyError or ValueError for anything else."""
    name, mode = key.split()
    if mode not in SCALES:
        raise ValueError(f"unknown mode {mode!r}")
    return (NOTE_PC[name[0]] + {"": 0, "#": 1, "b": -1}[name[1:]]) % 12, mode


@dataclass(frozen=True)
class Song:
    """Song-level choices, fixed by segment 0 and carried in the hand-off."""

    seed: int
    bpm: float
    key: str  # "A minor"
    progression: str  # roman numerals
    bars_per_chord: int
    genre: str
    drums: str  # drum pattern family
    bass: str
    lead: str
    pad: str
    arp: str
    swing: float

    @property
    def step_samples(self) -> float:
        return SR * 60.0 / self.bpm / 4

    @property
    def bar_samples(self) -> float:
        return self.step_samples * STEPS

    @property
    def tonic(self) -> int:
        return parse_key(self.key)[0]

    @property
    def mode(self) -> str:
        return parse_key(self.key)[1]

    def instruments(self) -> str:
        return f"bass={self.bass}, lead={self.lead}, pad={self.pad}, arp={self.arp}"


@dataclass(frozen=True)
class State:
    """The hand-off: song choices, where the window ended, and when each section started."""

    song: Song
    end_frame: int
    sections: tuple[tuple[int, str], ...]  # (first bar, kind), ascending

    def to_bytes(self) -> bytes:
        body = {"v": HANDOFF_VERSION, "song": asdict(self.song), "end_frame": self.end_frame,
                "sections": [list(s) for s in self.sections]}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "State":
        try:
            body = json.loads(data)
            if body["v"] != HANDOFF_VERSION:
                raise ValueError(f"version {body['v']!r}, expected {HANDOFF_VERSION}")
            song = Song(**{f.name: body["song"][f.name] for f in fields(Song)})
            sections = tuple((int(bar), str(kind)) for bar, kind in body["sections"])
            state = cls(song, int(body["end_frame"]), sections)
            check_state(state)
            return state
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise EngineError(f"procedural: bad hand-off state ({type(e).__name__}: {e}); expected the "
                              f"JSON this engine wrote at the end of the previous window") from None


def check_state(state: State) -> None:
    """Reject a hand-off whose values would make the synthesis fail or misbehave."""
    s = state.song
    if not (isinstance(s.seed, int) and s.seed >= 0 and isinstance(s.bars_per_chord, int)
            and s.bars_per_chord >= 1 and 40 <= s.bpm <= 240 and 0 <= s.swing < 1 and state.end_frame >= 0):
        raise ValueError("seed, bpm, bars_per_chord, swing or end_frame out of range")
    bars = [bar for bar, _ in state.sections]
    if not bars or bars[0] != 0 or any(a >= b for a, b in zip(bars, bars[1:])):
        raise ValueError("the section timeline must start at bar 0 and ascend")
    if any(kind not in KINDS for _, kind in state.sections) or s.drums not in BASS_LINES:
        raise ValueError("unknown section kind or drum family")
    for role in ("bass", "lead", "pad", "arp"):
        if f"{role}:{getattr(s, role)}" not in TIMBRES:
            raise ValueError(f"unknown {role} instrument {getattr(s, role)!r}")
    parse_progression(s.progression, s.mode)


# ---------------------------------------------------------------- reading the text


def find_bpm(text: str) -> float | None:
    m = BPM_RE.search(text)
    return min(240.0, max(40.0, float(m.group(1)))) if m else None


def find_key(text: str) -> str | None:
    m = KEY_RE.search(text)
    if not m:
        return None
    return f"{m.group(1)}{m.group(2)} {'major' if m.group(3).lower() in ('major', 'maj') else 'minor'}"


def first_match(text: str, options: dict[str, re.Pattern[str]]) -> str | None:
    """The option whose words occur earliest in the text (genre field comes before the prompt)."""
    hits = [(m.start(), name) for name, rx in options.items() if (m := rx.search(text))]
    return min(hits)[1] if hits else None


def find_section(text: str) -> str:
    """Arrangement kind of the window: the last section word (the section part ends the text)."""
    hits = SECTION_RE.findall(text.lower())
    return SECTION_OF[hits[-1]] if hits else "full"


def choose_song(text: str, seed: int) -> Song:
    """Song-level choices from the text, the rest drawn from the song seed."""
    low = text.lower()
    rng = np.random.default_rng([seed, PART_SONG])
    genre_name = first_match(low, GENRE_RE) or DEFAULT_GENRES[rng.integers(len(DEFAULT_GENRES))]
    genre = next(g for g in GENRES if g.name == genre_name)
    mood = first_match(low, MOOD_RE)
    bpm = find_bpm(text) or float(rng.integers(genre.bpm[0], genre.bpm[1] + 1))
    key = find_key(text)
    if key is None:
        mode = MOOD_MODE.get(mood or "") or ("minor", "major")[rng.integers(2)]
        key = f"{KEY_NAMES[rng.integers(12)]} {mode}"
    mode = key.split()[1]
    options = PROGRESSIONS[(mode, mood if (mode, mood) in PROGRESSIONS else None)]
    picks = {role: str(rng.choice(getattr(genre, role))) for role in ("bass", "lead", "pad", "arp")}
    for words, role, instrument in INSTRUMENT_RE:
        if words.search(low):
            picks[role] = instrument
    return Song(seed, bpm, key, options[rng.integers(len(options))], 2 if bpm >= 140 else 1, genre.name,
                genre.drums, picks["bass"], picks["lead"], picks["pad"], picks["arp"], genre.swing)


# ---------------------------------------------------------------- harmony


@dataclass(frozen=True)
class Chord:
    root: int  # semitones above the tonic
    quality: str

    def pitch_classes(self, tonic: int) -> tuple[int, ...]:
        return tuple((tonic + self.root + i) % 12 for i in CHORD_TONES[self.quality])


def parse_chord(numeral: str, mode: str) -> Chord:
    m = ROMAN_RE.match(numeral)
    if not m:
        raise ValueError(f"bad chord numeral {numeral!r}")
    flat, degree, suffix = m.groups()
    major = degree.isupper()
    root = SCALES[mode][ROMAN.index(degree.lower())] - (1 if flat else 0)
    quality = {"maj7": "maj7", "7": "dom7" if major else "min7", "o": "dim"}.get(suffix or "",
                                                                               "maj" if major else "min")
    return Chord(root % 12, quality)


@lru_cache(maxsize=64)
def parse_progression(progression: str, mode: str) -> tuple[Chord, ...]:
    chords = tuple(parse_chord(n, mode) for n in progression.split())
    if not chords:
        raise ValueError("empty progression")
    return chords


def section_at(sections: tuple[tuple[int, str], ...], bar: int) -> tuple[str, int]:
    """(kind, first bar of that section) in effect at `bar`."""
    kind, since = sections[0][1], sections[0][0]
    for start, k in sections:
        if start <= bar:
            kind, since = k, start
    return kind, since


def chord_at(song: Song, sections: tuple[tuple[int, str], ...], bar: int) -> Chord:
    """The progression runs on the absolute bar count; the outro cycles a cadence to the tonic."""
    kind, since = section_at(sections, bar)
    if kind == "outro":
        return parse_progression(CADENCE[song.mode], song.mode)[((bar - since) // song.bars_per_chord) % 4]
    chords = parse_progression(song.progression, song.mode)
    shift = len(chords) // 2 if kind == "bridge" else 0
    return chords[(bar // song.bars_per_chord + shift) % len(chords)]


def arrangement_at(kind: str, bars_in: int) -> Arrangement:
    """The outro thins out: drums to hats after 4 bars, to nothing after 8."""
    a = ARRANGEMENTS[kind]
    if kind != "outro":
        return a
    drums = "groove" if bars_in < 4 else "hats" if bars_in < 8 else "off"
    return Arrangement(drums, a.bass, a.pad, a.lead, a.arp if bars_in < 8 else 0.0)


def place_in(pcs: tuple[int, ...], low: int) -> list[int]:
    """Each pitch class in the octave starting at MIDI `low`: close voicing, smooth voice leading."""
    return sorted(low + (pc - low) % 12 for pc in pcs)


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    step: float  # onset in sixteenth steps from the song start
    role: str  # drums, bass, pad, lead, arp
    sound: str  # drum name or instrument
    pitches: tuple[int, ...]  # MIDI notes sounded together (drums: none)
    gate: int  # samples the note is held (drums: 0)
    gain: float


def bar_rng(song: Song, part: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([song.seed, part, *keys])


def gate_samples(song: Song, steps: float) -> int:
    return round(steps * song.step_samples)


def drum_events(song: Song, bar: int, level: str, bars_in: int) -> list[Event]:
    if song.drums == "none" or level == "off":
        return []
    rng = bar_rng(song, PART_DRUMS, bar)
    base = bar * STEPS
    fill = DRUM_LEVEL[level] >= 2 and bars_in % 8 == 7 and rng.random() < 0.7
    events = []
    for sound, pattern, needs in DRUM_LINES[song.drums]:
        if DRUM_LEVEL[level] < DRUM_LEVEL[needs]:
            continue
        for step, hit in enumerate(pattern):
            if hit != "." and not (fill and step >= 12 and sound != "kick"):
                gain = DRUM_GAIN[sound] * (1.0 if hit == "x" else 0.45) * (0.85 + 0.15 * rng.random())
                events.append(Event(base + step, "drums", sound, (), 0, gain))
    if fill:
        events += [Event(base + s, "drums", "snare", (), 0, DRUM_GAIN["snare"] * (0.5 + 0.15 * (s - 12)))
                   for s in (12, 13, 14, 15)]
    if level == "full" and bars_in % 8 == 0:
        events.append(Event(base, "drums", "crash", (), 0, DRUM_GAIN["crash"]))
    return events


def bass_events(song: Song, bar: int, chord: Chord, kind: str, gain: float) -> list[Event]:
    if gain <= 0:
        return []
    gain *= BASS_LEVEL.get(song.drums, 1.0)
    root = place_in(chord.pitch_classes(song.tonic)[:1], 33)[0]
    if kind == "bridge":
        return [Event(bar * STEPS, "bass", song.bass, (root,), gate_samples(song, 15.5), gain)]
    rng = bar_rng(song, PART_BASS, bar)
    line = BASS_LINES[song.drums]
    onsets = [i for i, c in enumerate(line) if c == "x"] + [STEPS]
    staccato = song.drums in ("four", "backbeat")
    events = []
    for step, nxt in zip(onsets, onsets[1:]):
        length = min(nxt - step, 1.6) if staccato else (nxt - step) * 0.95
        roll = rng.random()
        midi = root + 12 if staccato and roll < 0.2 else root + 7 if nxt == STEPS and roll > 0.8 else root
        events.append(Event(bar * STEPS + step, "bass", song.bass, (midi,), gate_samples(song, length), gain))
    return events


def pad_events(song: Song, bar: int, chord: Chord, since: int, gain: float) -> list[Event]:
    """Sustained chord at each chord change (a struck piano re-plays it every half bar)."""
    if gain <= 0:
        return []
    voicing = place_in(chord.pitch_classes(song.tonic), 54)
    if song.pad == "piano":
        hits = [(0, 8.0), (8, 8.0)]
    elif bar % song.bars_per_chord == 0 or bar == since:
        hits = [(0, float(STEPS * (song.bars_per_chord - bar % song.bars_per_chord)))]
    else:
        return []
    return [Event(bar * STEPS + s, "pad", song.pad, tuple(voicing), gate_samples(song, length), gain)
            for s, length in hits]


def lead_events(song: Song, bar: int, chord: Chord, kind: str, gain: float) -> list[Event]:
    """A melody that repeats every two progression cycles: chord tones on the beats, steps between."""
    if gain <= 0:
        return []
    cycle = 2 * song.bars_per_chord * len(parse_progression(song.progression, song.mode))
    rng = bar_rng(song, PART_LEAD, bar % cycle, KINDS.index(kind))
    pcs = chord.pitch_classes(song.tonic)
    scale = {(song.tonic + s) % 12 for s in SCALES[song.mode]} | set(pcs)
    notes = [m for m in range(60, 88) if m % 12 in scale]
    tones = [m for m in notes if m % 12 in pcs and 64 <= m <= 81]
    pitch = tones[rng.integers(len(tones))]
    events = []
    for step, length in RHYTHMS[rng.integers(len(RHYTHMS))]:
        i = min(len(notes) - 1, max(0, notes.index(pitch) + int(rng.choice(MOVES))))
        pitch = notes[i] if step % 4 else min(tones, key=lambda m: (abs(m - notes[i]), m))
        events.append(Event(bar * STEPS + step, "lead", song.lead, (pitch,), gate_samples(song, length * 0.9),
                            gain * (1.0 if step % 4 == 0 else 0.85)))
    return events


def arp_events(song: Song, bar: int, chord: Chord, gain: float) -> list[Event]:
    """Chord tones climbing two octaves, indexed by the absolute step so it never restarts."""
    if gain <= 0:
        return []
    voicing = place_in(chord.pitch_classes(song.tonic), 60)
    tones = voicing + [m + 12 for m in voicing]
    rate = 1 if song.bpm <= 130 else 2
    gate = gate_samples(song, rate * 0.9)
    return [Event(bar * STEPS + s, "arp", song.arp, (tones[((bar * STEPS + s) // rate) % len(tones)],), gate,
                  gain * (1.0 if s % 4 == 0 else 0.8)) for s in range(0, STEPS, rate)]


def final_events(song: Song, bar: int, gate: int) -> list[Event]:
    """The final cadence: tonic chord, bass and melody held to the end, one last hit."""
    pcs = Chord(0, "maj" if song.mode == "major" else "min").pitch_classes(song.tonic)
    base = bar * STEPS
    events = [Event(base, "pad", song.pad, tuple(place_in(pcs, 54)), gate, ROLE_GAIN["pad"]),
              Event(base, "bass", song.bass, tuple(place_in(pcs[:1], 33)), gate,
                    ROLE_GAIN["bass"] * BASS_LEVEL.get(song.drums, 1.0)),
              Event(base, "lead", song.lead, tuple(place_in(pcs[:1], 67)), gate, ROLE_GAIN["lead"] * 0.6)]
    if song.drums != "none":
        events += [Event(base, "drums", "kick", (), 0, DRUM_GAIN["kick"]),
                   Event(base, "drums", "crash", (), 0, DRUM_GAIN["crash"])]
    return events


def final_bar(song: Song, sections: tuple[tuple[int, str], ...], end: int) -> int | None:
    """In an outro window, the bar where the final cadence starts: at least 3 s before the end."""
    if sections[-1][1] != "outro":
        return None
    hold = max(1, math.ceil(3.0 * SR / song.bar_samples))
    bar = max(0, math.floor(end / song.bar_samples) - hold)
    return bar - bar % song.bars_per_chord  # on a chord change: no earlier chord still held


def bar_events(song: Song, sections: tuple[tuple[int, str], ...], bar: int, final: int | None,
               end: int) -> list[Event]:
    """All notes starting in `bar`, in a fixed part order (the summation order is part of exactness)."""
    if final is not None and bar >= final:
        return final_events(song, bar, end - round(bar * song.bar_samples)) if bar == final else []
    kind, since = section_at(sections, bar)
    a = arrangement_at(kind, bar - since)
    chord = chord_at(song, sections, bar)
    return (drum_events(song, bar, a.drums, bar - since)
            + bass_events(song, bar, chord, kind, a.bass * ROLE_GAIN["bass"])
            + pad_events(song, bar, chord, since, a.pad * ROLE_GAIN["pad"])
            + lead_events(song, bar, chord, kind, a.lead * ROLE_GAIN["lead"])
            + arp_events(song, bar, chord, a.arp * ROLE_GAIN["arp"]))


# ---------------------------------------------------------------- synthesis


def partials(shape: str, n: int) -> np.ndarray:
    """Amplitudes of partials 1..n (sine phase) for each wavetable shape."""
    k = np.arange(1, n + 1, dtype=np.float64)
    odd = k % 2 == 1
    if shape in ("organ", "sub"):
        levels = DRAWBARS if shape == "organ" else SUB
        return np.array([levels.get(i, 0.0) for i in range(1, n + 1)])
    return {
        "sine": (k == 1) * 1.0,
        "saw": 1 / k,
        "square": odd / k,
        "tri": odd * (-1.0) ** ((k - 1) // 2) / k**2,
        "piano": k**-1.4 * (1 + 0.5 * (k == 2)),
    }[shape]


@lru_cache(maxsize=256)
def wavetable(shape: str, n: int) -> np.ndarray:
    """One band-limited cycle of `shape` with partials 1..n."""
    spec = np.zeros(TABLE // 2 + 1, dtype=np.complex128)
    spec[1:n + 1] = -0.5j * TABLE * partials(shape, n)
    cycle = np.fft.irfft(spec, TABLE)
    cycle /= np.abs(cycle).max()
    return cycle.astype(np.float32)


def band_limit(shape: str, wanted: int, freq: float) -> np.ndarray:
    """The table with at most `wanted` partials and none above 0.45 * SR (a power of two, cached)."""
    limit = max(1, int(0.45 * SR / freq))
    return wavetable(shape, min(wanted, 2 ** int(math.log2(limit))))


def seconds(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / np.float32(SR)


def phase(tb: Timbre, freq: float, n: int) -> np.ndarray:
    """Oscillator phase from the onset as uint32 fixed point (one cycle = 2**32, wraps for free)."""
    step = freq * 2**32 / SR
    if not tb.vibrato:
        return np.arange(n, dtype=np.uint32) * np.uint32(round(step))
    t = np.arange(n) / SR
    depth = 2 ** (tb.vibrato / 1200) - 1
    inc = np.rint(step * (1 + depth * np.clip((t - 0.2) / 0.3, 0, 1) * np.sin(2 * np.pi * 5.0 * t)))
    inc[0] = 0  # phase 0 at the onset
    return np.cumsum(inc.astype(np.uint32), dtype=np.uint32)


def lookup(table: np.ndarray, ph: np.ndarray) -> np.ndarray:
    """Nearest-sample wavetable read: the top TABLE_BITS of the phase index the table."""
    return table[ph >> np.uint32(32 - TABLE_BITS)]


def voice(tb: Timbre, freq: float, n: int, fall: np.ndarray | None) -> np.ndarray:
    """One oscillator: wavetable with a brightness envelope `fall`, or two-operator FM."""
    ph = phase(tb, freq, n)
    if tb.fm:
        carrier = ph.astype(np.float32) * np.float32(2 * np.pi / 2**32)
        return np.sin(carrier + tb.fm * (0.25 + 0.75 * fall) * np.sin(carrier))
    dark = lookup(band_limit(tb.shape, tb.dark, freq), ph)
    if fall is None:
        return dark
    return dark + fall * (lookup(band_limit(tb.shape, tb.bright, freq), ph) - dark)


def envelope(tb: Timbre, gate: int, t: np.ndarray) -> np.ndarray:
    """Attack ramp, decay to sustain, squared linear release ending exactly at zero (no clicks)."""
    env = np.ones_like(t) if math.isinf(tb.decay) else tb.sustain + (1 - tb.sustain) * np.exp(-t / tb.decay)
    rise = min(t.size, math.ceil(tb.attack * SR))
    env[:rise] *= t[:rise] / tb.attack
    env[gate:] *= np.clip(1 - (t[gate:] - gate / SR) / tb.release, 0, 1) ** 2
    return env


def pan_gains(pan: float) -> np.ndarray:
    angle = (pan + 1) * math.pi / 4
    return (np.array([[math.cos(angle)], [math.sin(angle)]]) * math.sqrt(2)).astype(np.float32)


def render_note(role: str, instrument: str, pitches: tuple[int, ...], gate: int) -> np.ndarray:
    """A whole note (or chord), stereo float32, from its onset through its release."""
    tb = TIMBRES[f"{role}:{instrument}"]
    n = gate + int(tb.release * SR)
    t = seconds(n)
    fall = np.exp(-t / tb.tone_decay) if tb.fm or tb.bright != tb.dark else None
    env = envelope(tb, gate, t)
    freqs = [440.0 * 2 ** ((m - 69) / 12) for m in pitches]
    if tb.spread:
        return np.stack([sum(voice(tb, f * 2 ** (c / 2400), n, fall) for f in freqs) * env
                         for c in (-tb.spread, tb.spread)])
    return pan_gains(ROLE_PAN[role]) * (sum(voice(tb, f, n, fall) for f in freqs) * env)


def decaying(t: np.ndarray, tau: float, length: float) -> np.ndarray:
    """Exponential decay with a 1 ms attack and a 10 ms fade to zero at `length` seconds."""
    return np.minimum(1, t / 0.001) * np.exp(-t / tau) * np.clip((length - t) / 0.01, 0, 1)


def filtered(noise: np.ndarray, kind: str, cutoff: float | tuple[float, float]) -> np.ndarray:
    return signal.sosfilt(signal.butter(4, cutoff, kind, fs=SR, output="sos"), noise)


@lru_cache(maxsize=1)
def drum_kit() -> dict[str, np.ndarray]:
    """Synthesized one-shots (fixed noise seed): kick sweep, snare tone + noise, clap bursts, hats."""
    rng = np.random.default_rng(7)
    t = np.arange(int(2.5 * SR)) / SR
    noise = rng.standard_normal((2, t.size))
    sweep = np.cumsum(45 + 110 * np.exp(-t / 0.035)) / SR
    kick = np.sin(2 * np.pi * sweep) * decaying(t, 0.28, 0.5) + 0.2 * noise[0] * decaying(t, 0.003, 0.02)
    snare = (0.6 * np.sin(2 * np.pi * 185 * t) * decaying(t, 0.05, 0.35)
             + filtered(noise[0], "bandpass", (1200, 9000)) * decaying(t, 0.11, 0.35))
    bursts = sum(decaying(np.maximum(t - d, 0), 0.008, 0.3) * (t >= d) for d in (0.0, 0.011, 0.023))
    clap = filtered(noise[1], "bandpass", (900, 3500)) * (bursts + 0.6 * decaying(t, 0.13, 0.4) * (t >= 0.023))
    hat = filtered(noise[0], "highpass", 7000)
    shaker = filtered(noise[1], "bandpass", (4500, 10000)) * np.minimum(1, t / 0.012)
    crash = np.stack([filtered(n, "highpass", 3500) for n in noise])
    kit = {  # name: (mono one-shot, pan)
        "kick": (kick[: int(0.5 * SR)], 0.0), "snare": (snare[: int(0.35 * SR)], 0.0),
        "clap": (clap[: int(0.4 * SR)], 0.0), "hat": ((hat * decaying(t, 0.03, 0.12))[: int(0.12 * SR)], 0.25),
        "open": ((hat * decaying(t, 0.22, 0.5))[: int(0.5 * SR)], 0.25),
        "shaker": ((shaker * decaying(t, 0.04, 0.1))[: int(0.1 * SR)], -0.3),
    }
    out = {name: pan_gains(pan) * (x / np.abs(x).max()).astype(np.float32) for name, (x, pan) in kit.items()}
    out["crash"] = (crash * decaying(t, 0.8, 2.5) / np.abs(crash).max()).astype(np.float32)
    return out


@lru_cache(maxsize=1)
def reverb_ir() -> np.ndarray:
    """Stereo decaying-noise impulse response at SR / REVERB_DECIMATION (RT60 about 1.6 s)."""
    rate = SR // REVERB_DECIMATION
    t = np.arange(REVERB_PAD // REVERB_DECIMATION) / rate
    noise = np.random.default_rng(11).standard_normal((2, t.size))
    ir = noise * np.exp(-t / 0.23) * np.clip((t - 0.012) / 0.02, 0, 1)
    return (ir / np.sqrt((ir**2).sum(axis=1, keepdims=True))).astype(np.float32)


def reverb(send: np.ndarray, first: int, count: int) -> np.ndarray:
    """Convolution reverb at a quarter rate: 4-sample block means (the bus starts on an absolute
    multiple of 4, so blocks never depend on the window), output for blocks [first, first+count)."""
    blocks = send.reshape(2, -1, REVERB_DECIMATION).mean(axis=2)
    wet = signal.fftconvolve(blocks, reverb_ir(), axes=1)[:, : blocks.shape[1]]
    return upsample4(wet, first, count)


def upsample4(w: np.ndarray, first: int, count: int) -> np.ndarray:
    """Linear interpolation between block centres (at 4m + 1.5): sample 4m + r mixes its block
    with the previous (r < 2) or next (r >= 2) one."""
    prev, cur, nxt = (w[:, first + d:first + count + d] for d in (-1, 0, 1))
    out = np.stack([0.375 * prev + 0.625 * cur, 0.125 * prev + 0.875 * cur,
                    0.875 * cur + 0.125 * nxt, 0.625 * cur + 0.375 * nxt], axis=-1)
    return out.reshape(2, -1)


@lru_cache(maxsize=8)
def duck_curve(length: int) -> np.ndarray:
    x = seconds(length)
    return 1 - 0.3 * (1 - np.exp(-x / 0.004)) * np.exp(-x / 0.12)


def kick_bar(sections: tuple[tuple[int, str], ...], bar: int, final: int | None) -> bool:
    if bar < 0 or (final is not None and bar >= final):
        return False
    kind, since = section_at(sections, bar)
    return DRUM_LEVEL[arrangement_at(kind, bar - since).drums] >= DRUM_LEVEL["groove"]


def sidechain(song: Song, sections: tuple[tuple[int, str], ...], final: int | None, start: int,
              n: int) -> np.ndarray | float:
    """Four-on-the-floor pumping: the music ducks after each beat of the bars where the kick plays."""
    if song.drums != "four":
        return 1.0
    beat = song.bar_samples / 4
    curve = duck_curve(math.ceil(beat) + 1)
    gain = np.ones(n, np.float32)
    for k in range(math.floor(start / beat), math.floor((start + n - 1) / beat) + 1):
        if kick_bar(sections, k // 4, final):
            a, b = round(k * beat), round((k + 1) * beat)
            lo, hi = max(a, start), min(b, start + n)
            gain[lo - start:hi - start] = curve[lo - a:hi - a]
    return gain


def place(bus: np.ndarray, lo: int, start: int, note: np.ndarray, gain: float) -> None:
    """Add the part of a note that falls inside the bus (which begins at absolute sample lo)."""
    a, b = max(start, lo), min(start + note.shape[1], lo + bus.shape[1])
    if a < b:
        bus[:, a - lo:b - lo] += gain * note[:, a - start:b - start]


def onset(song: Song, step: float) -> int:
    return round((step + song.swing * (step % 2 == 1)) * song.step_samples)


def render(song: Song, sections: tuple[tuple[int, str], ...], final: int | None, start: int, n: int,
           progress: Progress) -> np.ndarray:
    """Samples [start, start + n) of the song, float32 stereo."""
    lo, hi = start - REVERB_PAD, start + n + REVERB_DECIMATION
    end = start + n
    first = max(0, math.floor((lo - MAX_TAIL_S * SR) / song.bar_samples) - song.bars_per_chord)
    first = min(first, final) if final is not None else first
    bars = range(first, math.floor((hi - 1) / song.bar_samples) + 1)
    buses = np.zeros((3, 2, hi - lo), np.float32)
    kit, notes = drum_kit(), {}
    for i, bar in enumerate(bars):
        for ev in bar_events(song, sections, bar, final, end):
            if ev.role == "drums":
                sound = kit[ev.sound]
            else:
                key = (ev.role, ev.sound, ev.pitches, ev.gate)
                if key not in notes:
                    notes[key] = render_note(*key)
                sound = notes[key]
            place(buses[ROLE_BUS[ev.role]], lo, onset(song, ev.step), sound, ev.gain)
        progress(i + 1, len(bars) + 1)
    mix = master(song, sections, buses, start, start - lo, n, final)
    progress(len(bars) + 1, len(bars) + 1)
    return mix


def master(song: Song, sections: tuple[tuple[int, str], ...], buses: np.ndarray, start: int, offset: int,
           n: int, final: int | None) -> np.ndarray:
    """Sidechain, reverb and soft clip of song samples [start, start + n) (bus positions from
    `offset`), and the fade of a final cadence."""
    drums, bass, keys = buses
    wet = reverb(REVERB_SEND_DRUMS * drums + REVERB_SEND_KEYS * keys, offset // REVERB_DECIMATION,
                 n // REVERB_DECIMATION)
    music = bass[:, offset:offset + n] + keys[:, offset:offset + n]
    music *= sidechain(song, sections, final, start, n)
    gain = MIX_GAIN_NO_DRUMS if song.drums == "none" else MIX_GAIN
    out = CEILING * np.tanh((drums[:, offset:offset + n] + music + wet) * (gain / CEILING))
    if final is not None:
        out *= final_fade(song, final, start, n)
    return out


def final_fade(song: Song, final: int, start: int, n: int) -> np.ndarray:
    """Raised-cosine fade to silence over the last FADE_S of the window (at most the cadence)."""
    end = start + n
    fade = min(int(FADE_S * SR), end - round(final * song.bar_samples))
    x = np.arange(start, end) - (end - fade)
    return (0.5 * (1 + np.cos(np.pi * np.clip(x / fade, 0, 1)))).astype(np.float32)


# ---------------------------------------------------------------- the engine


def next_sections(state: State, kind: str, new_start: int) -> tuple[tuple[int, str], ...]:
    """Append a section change at the first bar line of the new part (the context stays as it was)."""
    if state.sections[-1][1] == kind:
        return state.sections
    bar = max(state.sections[-1][0] + 1, math.ceil(new_start / state.song.bar_samples))
    return (*state.sections, (bar, kind))


class ProceduralEngine:
    """Offline engine: parses tempo, key, genre, mood, instruments and section from the text and
    synthesizes drums, bass, pad, lead and arpeggio; >100x real time on one CPU core."""

    name = "procedural"
    model = "procedural-v1"
    version = "1"
    sample_rate = SR
    channels = 2

    def generate(self, req: WindowRequest, progress: Progress) -> WindowResult:
        if req.n_frames <= 0 or req.context_frames < 0 or req.n_frames <= req.context_frames:
            raise EngineError(f"procedural: window of {req.n_frames} frames with {req.context_frames} "
                              f"context frames; need n_frames > context_frames >= 0")
        kind = find_section(req.text)
        if req.handoff is None:
            if req.context_frames:
                raise EngineError(f"procedural: {req.context_frames} context frames but no hand-off state")
            state = State(choose_song(req.text, req.seed % 2**63), 0, ((0, kind),))
        else:
            state = State.from_bytes(req.handoff)
        start_frame = state.end_frame - req.context_frames
        if start_frame < 0:
            raise EngineError(f"procedural: {req.context_frames} context frames reach before the song start "
                              f"(previous window ended at frame {state.end_frame})")
        sections = next_sections(state, kind, state.end_frame * FRAME)
        song = state.song
        end_frame = start_frame + req.n_frames
        final = final_bar(song, sections, end_frame * FRAME)
        audio = render(song, sections, final, start_frame * FRAME, req.n_frames * FRAME, progress)
        details = {"bpm": f"{song.bpm:g}", "key": song.key, "progression": song.progression,
                   "bars_per_chord": str(song.bars_per_chord), "genre": song.genre, "drums": song.drums,
                   "instruments": song.instruments(), "section": kind, "song_seed": str(song.seed),
                   "start_s": f"{start_frame / 50:g}", "sampling": "ignored (procedural engine)"}
        if final is not None:
            details["final_cadence_s"] = f"{round(final * song.bar_samples) / SR:.6f}"
        return WindowResult(audio, State(song, end_frame, sections).to_bytes(), details)
