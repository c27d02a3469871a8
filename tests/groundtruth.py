"""Ground truth for the analyzers' tests and accuracy benchmark: recordings and renders of known tempo and key.

Three sources, none downloaded at run time (each names the Debian package that provides it):
- procedural songs from this project's engine (bpm and key are what it was asked: `.details`);
- `sonic-pi-samples`: real recorded loops (CC0, freesound.org) whose tempo follows from their length: a loop
  cut to N beats lasts N * 60 / bpm. The beat counts below are the ones that give a whole-number tempo to the
  sample (e.g. loop_breakbeat: 84000 samples at 44.1 kHz = 1.904762 s = 4 beats at exactly 126.000 bpm), or
  that the name states (loop_drone_g_97: 97 bpm, and its siblings from the same author and set, 2.474 s =
  4 beats at 97.00); loop_amen (1.7533 s: 4 beats at 136.9 bpm, the famous break's tempo) is the one
  non-integer tempo kept. One tonal sample names its key: guit_em9 (an E minor 9 chord). guit_e_fifths is
  left out (its chroma peaks at F# and B, not E) and so are the single bass notes (bass_*_c: a note is
  not a key) and loop_drone_g_97 (a G-D drone, no third);
- `fluidsynth` + `fluid-soundfont-gm` (FluidR3_GM, sampled real instruments): short MIDI pieces written here
  in a chosen key and tempo (drums on the GM percussion channel, bass, chords, a melody), rendered at 32 kHz.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SONIC_PI = Path("/usr/share/sonic-pi/samples")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


@dataclass(frozen=True)
class Loop:
    name: str
    beats: int  # beats in one pass of the file
    why: str  # where the beat count (so the tempo) comes from


LOOPS = (
    Loop("loop_amen", 4, "the amen break, one bar: 136.9 bpm (1.7533 s)"),
    Loop("loop_amen_full", 16, "four bars: 302400 samples = exactly 140.000 bpm"),
    Loop("loop_breakbeat", 4, "one bar: 84000 samples = exactly 126.000 bpm"),
    Loop("loop_compus", 16, "four bars: 286054 samples = 148.000 bpm"),
    Loop("loop_electric", 4, "one bar at 97 bpm, the set of loop_drone_g_97 (2.4742 s = 97.00 bpm)"),
    Loop("loop_mehackit1", 4, "one bar at 97 bpm, same set (2.4742 s)"),
    Loop("loop_mehackit2", 4, "one bar at 97 bpm, same set (2.4742 s)"),
    Loop("loop_perc1", 4, "one bar at 97 bpm, same set (2.4742 s)"),
    Loop("loop_perc2", 4, "one bar at 97 bpm, same set (2.4742 s)"),
    Loop("loop_weirdo", 8, "two bars at 97 bpm, same set (4.9485 s)"),
    Loop("loop_garzul", 16, "four bars in exactly 8.000 s: 120 bpm"),
    Loop("loop_mika", 16, "four bars in exactly 8.000 s: 120 bpm"),
    Loop("loop_safari", 16, "four bars in 8.0051 s: 119.9 bpm"),
    Loop("loop_tabla", 16, "four bars in 10.674 s: 89.9 bpm"),
)
TONAL = (("guit_em9", 4, "minor"),)  # (sample, tonic pitch class, mode)


def need(path: Path, package: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the Debian package {package} "
                                f"(apt-get install -y {package})")


def read_sample(name: str) -> tuple[np.ndarray, int]:
    """(audio (channels, samples) float32, rate) of a sonic-pi sample."""
    import soundfile as sf

    need(SONIC_PI / f"{name}.flac", "sonic-pi-samples")
    data, sr = sf.read(SONIC_PI / f"{name}.flac", dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), sr


def loop_bpm(loop: Loop) -> float:
    import soundfile as sf

    need(SONIC_PI / f"{loop.name}.flac", "sonic-pi-samples")
    info = sf.info(SONIC_PI / f"{loop.name}.flac")
    return 60.0 * loop.beats * info.samplerate / info.frames


def tiled(audio: np.ndarray, sr: int, seconds: float, out_sr: int = 32000) -> np.ndarray:
    """The sample repeated to `seconds`, resampled to `out_sr` (the engines' rate)."""
    import soxr

    x = soxr.resample(audio.T, sr, out_sr).T.astype(np.float32) if sr != out_sr else audio
    n = int(seconds * out_sr)
    return np.tile(x, (1, -(-n // x.shape[1])))[:, :n]


# --- MIDI pieces of known key and tempo, rendered by fluidsynth ---------------------------------------------

MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: V has the leading tone
PROGRESSIONS = {"major": ((0, "maj"), (5, "maj"), (7, "maj"), (0, "maj"), (9, "min"), (5, "maj"), (7, "maj"),
                          (0, "maj")),
                "minor": ((0, "min"), (5, "min"), (7, "maj"), (0, "min"), (8, "maj"), (5, "min"), (7, "maj"),
                          (0, "min"))}
TRIADS = {"maj": (0, 4, 7), "min": (0, 3, 7)}
PROGRAMS = {"piano": 0, "epiano": 4, "organ": 19, "guitar": 24, "strings": 48, "flute": 73, "bass": 33}


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_file(notes: list[tuple[float, float, int, int, int]], bpm: float, programs: dict[int, int]) -> bytes:
    """Format-0 MIDI of (start beat, length beats, channel, note, velocity) at `bpm`, 480 ticks a beat."""
    tpb = 480
    events = [(0, bytes([0xFF, 0x51, 3]) + struct.pack(">I", round(60e6 / bpm))[1:])]
    events += [(0, bytes([0xC0 | ch, prog])) for ch, prog in programs.items()]
    for start, length, ch, note, vel in notes:
        on, off = round(start * tpb), round((start + length) * tpb) - 1
        events += [(on, bytes([0x90 | ch, note, vel])), (max(on + 1, off), bytes([0x80 | ch, note, 0]))]
    events.sort(key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))  # note-offs before note-ons at one tick
    body, now = b"", 0
    for tick, data in events:
        body += _vlq(tick - now) + data
        now = tick
    body += _vlq(0) + bytes([0xFF, 0x2F, 0])
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpb) + b"MTrk" + struct.pack(">I", len(body)) + body


def piece(tonic: int, mode: str, bars: int = 8, drums: bool = True, lead: str = "piano",
          chords: str = "strings", seed: int = 0) -> tuple[list, dict[int, int]]:
    """Notes of a 4/4 piece: a cadential progression in the key (one chord a bar), root bass in eighths,
    held chords, a melody on chord and scale tones, and a kick/snare/hat groove."""
    rng = np.random.default_rng(seed)
    scale = MAJOR if mode == "major" else MINOR
    prog = PROGRESSIONS[mode]
    notes = []
    for bar in range(bars):
        root, quality = prog[bar % len(prog)]
        base = bar * 4.0
        tones = [(tonic + root + t) % 12 for t in TRIADS[quality]]
        for t in tones:
            notes.append((base, 4.0, 1, 60 + t, 70))  # chords, from C4
        for e in range(8):
            notes.append((base + e / 2, 0.45, 2, 36 + (tonic + root) % 12, 90))  # bass, octave from C2
        beat = 0.0
        while beat < 4.0:
            length = float(rng.choice([0.5, 1.0, 1.0, 2.0]))
            pc = tones[rng.integers(3)] if beat in (0.0, 2.0) else (tonic + scale[rng.integers(7)]) % 12
            notes.append((base + beat, min(length, 4.0 - beat), 0, 72 + pc, 85))
            beat += length
        if drums:
            for b in range(4):
                notes.append((base + b, 0.25, 9, 36 if b in (0, 2) else 38, 100))
            for e in range(8):
                notes.append((base + e / 2, 0.25, 9, 42, 70))
    return notes, {0: PROGRAMS[lead], 1: PROGRAMS[chords], 2: PROGRAMS["bass"]}


def render(notes: list, programs: dict[int, int], bpm: float, sr: int = 32000) -> np.ndarray:
    """fluidsynth's render of the notes with FluidR3_GM: (2, samples) float32, the release tail cut at the
    last bar line."""
    import soundfile as sf

    need(SOUNDFONT, "fluid-soundfont-gm")
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise FileNotFoundError("fluidsynth is missing: install the Debian package fluidsynth "
                                "(apt-get install -y fluidsynth)")
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        mid.write_bytes(midi_file(notes, bpm, programs))
        subprocess.run([exe, "-ni", "-q", "-g", "0.5", "-r", str(sr), "-F", str(wav), str(SOUNDFONT), str(mid)],
                       check=True, capture_output=True, timeout=120)
        data, got = sf.read(wav, dtype="float32", always_2d=True)
    if got != sr:
        raise RuntimeError(f"fluidsynth wrote {got} Hz, asked {sr}")
    end = max(s + ln for s, ln, *_ in notes)
    return np.ascontiguousarray(data.T[:, : round(end * 60 / bpm * sr)])


# --- real music for the mastering tests -----------------------------------------------------------------------

MIXES = {  # recorded loops layered as a track would be: drums with a melodic or pad part
    "amen+garzul": (("loop_amen", 1.0), ("loop_garzul", 0.7)),
    "mika": (("loop_mika", 1.0),),
    "breakbeat+drone": (("loop_breakbeat", 1.0), ("ambi_drone", 1.0)),
}


def mastering_set(seconds: float, lufs: float = -18.0, sr: int = 32000) -> dict[str, np.ndarray]:
    """Stereo real music at `lufs` (as a raw engine output would be, unmastered): the sonic-pi mixes above
    and a FluidR3 piece with drums, each `seconds` long."""
    from longsong.audio.loudness import integrated_loudness

    out = {}
    for name, parts in MIXES.items():
        layers = [tiled(*read_sample(sample), seconds, sr) * gain for sample, gain in parts]
        out[name] = sum(np.broadcast_to(x, (2, x.shape[1])) for x in layers)
    notes, programs = piece(2, "minor", bars=max(1, round(seconds / 2.4)))
    fluid = render(notes, programs, 100.0, sr)
    out["fluidr3 piece"] = np.pad(fluid, ((0, 0), (0, max(0, round(seconds * sr) - fluid.shape[1]))))
    return {name: (x * 10 ** ((lufs - integrated_loudness(x, sr)) / 20)).astype(np.float32)
            for name, x in out.items()}
