"""Reading the prompt: genre, mood, instruments, tempo, key and section words -> `Song` and section kind."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from longsong.engines.procedural.song import KEY_NAMES, Song

BPM_RE = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*bpm", re.IGNORECASE)
KEY_RE = re.compile(r"(?<![A-Za-z])([A-G])([#b]?)\s*(?i:(major|minor|maj|min))(?![A-Za-z])")
PART_SONG = 4  # RNG stream of the song-level draws (the per-bar parts in patterns use 1-3)


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
    swing: float = 0.0  # delay of the swung off-beat, in steps (see Song.swung)


GENRES = (
    Genre("house", ("house", "disco", "dance", "club", "garage"), "four", (118, 126),
          ("saw", "fm"), ("pluck", "saw"), ("strings", "organ"), ("pluck",)),
    Genre("techno", ("techno", "trance", "edm", "electro", "rave", "electronic"), "four", (124, 136),
          ("saw", "square"), ("saw", "square"), ("strings", "warm"), ("pluck", "fm")),
    Genre("rock", ("rock", "punk", "metal", "grunge"), "backbeat", (100, 140),
          ("pluck", "saw"), ("saw", "square"), ("organ", "strings"), ("pluck",)),
    Genre("pop", ("pop", "indie", "synthwave", "funk", "soul", "r&b", "rnb", "country", "reggae"),
          "backbeat", (92, 122), ("pluck", "sub", "saw"), ("saw", "fm", "square"), ("warm", "strings"),
          ("pluck", "fm")),
    Genre("jazz", ("jazz", "swing", "bebop", "bossa nova"), "swing", (90, 140),  # a piano trio
          ("upright",), ("piano",), ("epiano", "piano"), ("fm",), 0.55),
    Genre("blues", ("blues", "shuffle", "boogie"), "shuffle", (72, 120),
          ("upright", "pluck"), ("pluck", "saw"), ("organ",), ("pluck",), 0.66),
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
    (("rhodes", "electric piano", "wurlitzer"), "pad", "epiano"),
    (("flute", "whistle", "ocarina"), "lead", "sine"),
    (("guitar", "harp"), "lead", "pluck"),
    (("synth lead", "supersaw", "synth"), "lead", "saw"),
    (("chiptune", "8-bit", "8bit"), "lead", "square"),
    (("strings", "violin", "orchestra", "orchestral", "cello"), "pad", "strings"),
    (("organ",), "pad", "organ"),
    (("808", "sub bass"), "bass", "sub"),
    (("acid", "303"), "bass", "saw"),
    (("upright", "double bass", "acoustic bass", "walking bass"), "bass", "upright"),
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
GENRE_PROGRESSIONS = {  # genres with their own harmony: ii-V-I and friends, the 12-bar blues (diatonic)
    ("jazz", "major"): ("ii7 V7 Imaj7 Imaj7", "Imaj7 vi7 ii7 V7", "iii7 vi7 ii7 V7", "Imaj7 IVmaj7 iii7 vi7"),
    ("jazz", "minor"): ("i7 iv7 V7 i7", "i7 VImaj7 iv7 V7", "i7 iv7 VII7 IIImaj7"),
    ("blues", "major"): ("I IV I I IV IV I I V7 IV I V7",),
    ("blues", "minor"): ("i7 iv7 i7 i7 iv7 iv7 i7 i7 V7 iv7 i7 V7",),
}

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
    options = GENRE_PROGRESSIONS.get((genre.name, mode)) or PROGRESSIONS[
        (mode, mood if (mode, mood) in PROGRESSIONS else None)]
    picks = {role: str(rng.choice(getattr(genre, role))) for role in ("bass", "lead", "pad", "arp")}
    for words, role, instrument in INSTRUMENT_RE:
        if words.search(low):
            picks[role] = instrument
    return Song(seed, bpm, key, options[rng.integers(len(options))], 2 if bpm >= 140 else 1, genre.name,
                genre.drums, picks["bass"], picks["lead"], picks["pad"], picks["arp"], genre.swing)
