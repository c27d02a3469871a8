"""Watermark robustness: is the embedded id still found in real music after codecs, noise, speed, pitch, crops, mixes?

Music set, all offline (tests/groundtruth.py says where each source comes from): 30 s excerpts at 32 kHz stereo
of recorded sonic-pi loops and samples (`sonic-pi-samples`, CC0 recordings) layered as tracks are (drums + melodic
or pad parts, varied gains and offsets), and FluidR3_GM renders (`fluid-soundfont-gm`, sampled instruments) of
MIDI pieces in varied keys, modes, tempi and instruments. Each is mastered as the pipeline does
(`master_track(x, 32000, -14, -1)`), then `longsong.audio.watermark.embed`s a distinct random 32-bit id with one
fixed 32-byte key. Constant-envelope signals (sines at 440 Hz and 2 kHz, a 330 Hz square, a hard-clipped loud
mix) go the same way and are reported apart. Every attack is applied to every watermarked excerpt and `detect`
run with the key: correct = found with the embedded id; a found other id is a wrong id, counted apart.
Also: false positives of `detect` on clean (never watermarked) 5 s and 10 s windows of music and synthetic
signals, the mark's level under the music per 1 s window, and the detector's time on one core. Targets are
issue 13's. Only `embed` and `detect` are used. Not a test:
`python benchmarks/watermark_robustness.py [--quick] [--json]` (--json: the results as JSON instead of tables).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections import Counter, defaultdict
from functools import lru_cache
from importlib.metadata import version
from math import ceil
from pathlib import Path
from typing import Callable, NamedTuple

import imageio_ffmpeg
import numpy as np
from scipy import signal
from threadpoolctl import threadpool_limits

from longsong.audio import watermark
from longsong.audio.mastering import master_track

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import groundtruth as gt  # noqa: E402  (the tests' offline recordings and renders)

SR, SECONDS, SEED, JOBS = 32000, 30.0, 13, 2
KEY = hashlib.sha256(b"longsong watermark robustness benchmark key").digest()  # 32 bytes
SONIC_MIXES = (  # beside gt.MIXES: drum loops with melodic loops / samples, (sample, gain)
    (("loop_amen_full", 1.0), ("ambi_piano", 0.8)), (("loop_breakbeat", 1.0), ("loop_garzul", 0.6)),
    (("loop_compus", 1.0), ("ambi_choir", 0.7)), (("loop_safari", 1.0), ("guit_em9", 0.8)),
    (("loop_tabla", 1.0), ("ambi_drone", 0.6)), (("loop_perc1", 1.0), ("loop_electric", 0.9)),
    (("loop_perc2", 0.8), ("loop_mehackit1", 1.0)), (("loop_amen", 0.9), ("loop_mehackit2", 1.0), ("ambi_glass_hum", 0.5)),
    (("loop_industrial", 0.7), ("loop_weirdo", 1.0)), (("loop_3d_printer", 0.6), ("loop_drone_g_97", 1.0), ("guit_harmonics", 0.7)),
    (("loop_mika", 1.0), ("guit_e_slide", 0.5)), (("loop_garzul", 1.0), ("ambi_lunar_land", 0.6)),
    (("loop_amen_full", 0.8), ("ambi_haunted_hum", 1.0)), (("loop_breakbeat", 0.7), ("guit_e_fifths", 1.0), ("ambi_sauna", 0.4)),
    (("loop_safari", 0.9), ("loop_electric", 0.5), ("ambi_piano", 0.7)),
)
FLUID = (  # (tonic, mode, lead, chords, bpm, drums, seed)
    (2, "minor", "piano", "strings", 100, True, 0), (7, "major", "flute", "strings", 120, True, 1),
    (0, "major", "epiano", "organ", 92, True, 2), (9, "minor", "guitar", "strings", 84, False, 3),
    (4, "major", "organ", "piano", 132, True, 4), (5, "minor", "strings", "epiano", 70, False, 5),
    (11, "major", "piano", "guitar", 110, True, 6), (3, "minor", "flute", "organ", 96, True, 7),
    (6, "major", "guitar", "epiano", 140, True, 8), (10, "minor", "epiano", "strings", 76, True, 9),
)
NOTES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
CONSTANT = ("sine 440 Hz", "sine 2 kHz", "square 330 Hz", "hard-clipped mix")
SYNTH = (("white", 0.1), ("white", 0.003), ("pink", 0.1), ("pink", 0.01), ("sine", 100), ("sine", 440),
         ("sine", 1000), ("sine", 2000), ("sine", 5000), ("sweep", 0), ("sweep", 1), ("hiss", 1e-4), ("hiss", 1e-3),
         ("square", 110), ("square", 330), ("square", 1000), ("am", 2000), ("clicks", 2), ("chord", 220), ("chord", 330))
EXCERPTS: list[tuple[str, str, np.ndarray]] = []  # (name, "music" | "constant", master); inherited by forked workers
IDS: list[int] = []


class Attack(NamedTuple):
    name: str
    fn: Callable  # (watermarked, rng, other master, other watermarked) -> attacked
    target: float | None  # fraction correct the issue asks for
    label: str
    reps: int = 1  # random trials per excerpt
    pair: bool = False  # two watermarked tracks: judged on both ids


def ffmpeg_codec(x: np.ndarray, codec: list[str], fmt: str) -> np.ndarray:
    """Encode with the project's ffmpeg (imageio-ffmpeg) and decode back to 32 kHz float, over f32le pipes."""
    exe, ch = imageio_ffmpeg.get_ffmpeg_exe(), str(x.shape[0])
    quiet = [exe, "-hide_banner", "-loglevel", "error"]
    raw = np.ascontiguousarray(x.T, dtype=np.float32).tobytes()
    enc = subprocess.run([*quiet, "-f", "f32le", "-ar", str(SR), "-ac", ch, "-i", "pipe:0", *codec, "-f", fmt,
                          "pipe:1"], input=raw, capture_output=True, check=True).stdout
    dec = subprocess.run([*quiet, "-i", "pipe:0", "-f", "f32le", "-ar", str(SR), "-ac", ch, "pipe:1"],
                         input=enc, capture_output=True, check=True).stdout
    return np.frombuffer(dec, dtype=np.float32).reshape(-1, x.shape[0]).T


def mp3(x: np.ndarray, rate: str) -> np.ndarray:
    return ffmpeg_codec(x, ["-c:a", "libmp3lame", "-b:a", rate], "mp3")


def noise(x: np.ndarray, rng, snr_db: float) -> np.ndarray:
    """White noise `snr_db` under the excerpt's mean power (all channels, whole excerpt)."""
    return x + rng.standard_normal(x.shape).astype(np.float32) * np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10))


def crop(x: np.ndarray, rng, seconds: float) -> np.ndarray:
    """A random `seconds` excerpt (uniform start)."""
    n = int(seconds * SR)
    start = int(rng.integers(0, x.shape[1] - n + 1))
    return x[:, start:start + n]


def lowpass(x: np.ndarray, hz: float) -> np.ndarray:
    return signal.sosfiltfilt(signal.butter(8, hz, fs=SR, output="sos"), x, axis=-1).astype(np.float32)


def librosa_fx(x: np.ndarray, what: str, amount: float) -> np.ndarray:
    """librosa pitch shift (tempo kept) or time stretch (pitch kept); librosa runs each channel on its own."""
    import librosa

    if what == "pitch":
        return librosa.effects.pitch_shift(x, sr=SR, n_steps=amount)
    return librosa.effects.time_stretch(x, rate=amount)


def attacks(quick: bool) -> tuple[Attack, ...]:
    """Issue 13's attack table (plus MP3 twice, 16 kHz round trip, gains); crops get several random starts."""
    db = lambda g: 10 ** (g / 20)  # noqa: E731
    rs = lambda x, up, down: signal.resample_poly(x, up, down, axis=-1).astype(np.float32)  # noqa: E731
    reps = 1 if quick else 3
    return (
        Attack("none", lambda x, *_: x, 0.95, "≥ 95 % (implied)"),
        Attack("MP3 64 kbps", lambda x, *_: mp3(x, "64k"), 0.95, "≥ 95 %"),
        Attack("MP3 128k, decoded, MP3 128k again", lambda x, *_: mp3(mp3(x, "128k"), "128k"), None, "none set"),
        Attack("AAC 96 kbps (ffmpeg aac)", lambda x, *_: ffmpeg_codec(x, ["-c:a", "aac", "-b:a", "96k"], "adts"),
               0.95, "≥ 95 %"),
        Attack("Opus 32 kbps (libopus, 48 kHz)", lambda x, *_: ffmpeg_codec(
            x, ["-c:a", "libopus", "-b:a", "32k", "-ar", "48000"], "ogg"), 0.95, "≥ 95 %"),
        Attack("white noise, 20 dB SNR", lambda x, rng, *_: noise(x, rng, 20.0), 0.95, "≥ 95 %"),
        Attack("speed +2 % (resample 50/51)", lambda x, *_: rs(x, 50, 51), 0.95, "≥ 95 %"),
        Attack("speed -2 % (resample 51/50)", lambda x, *_: rs(x, 51, 50), 0.95, "≥ 95 %"),
        Attack("random 10 s crop", lambda x, rng, *_: crop(x, rng, 10.0), 0.95, "≥ 95 %", reps),
        Attack("random 5 s crop", lambda x, rng, *_: crop(x, rng, 5.0), 0.90, "≥ 90 %", reps),
        Attack("mixed with another (clean) track at -10 dB", lambda x, rng, other, _: x + db(-10) * other,
               0.95, "≥ 95 %"),
        Attack("two watermarked tracks, 2nd at -6 dB", lambda x, rng, _, other_wm: x + db(-6) * other_wm,
               0.90, "both ids ≥ 90 %", pair=True),
        Attack("low-pass 4 kHz (Butterworth 8, filtfilt)", lambda x, *_: lowpass(x, 4000.0), 0.95, "≥ 95 %"),
        Attack("stereo -> mono (mean)", lambda x, *_: x.mean(axis=0, keepdims=True), 0.95, "≥ 95 %"),
        Attack("resample to 16 kHz and back", lambda x, *_: rs(rs(x, 1, 2), 2, 1), None, "none set"),
        Attack("gain -10 dB", lambda x, *_: x * np.float32(db(-10)), None, "none set"),
        Attack("gain +6 dB, clipped to ±1", lambda x, *_: np.clip(x * 2, -1, 1), None, "none set"),
        Attack("pitch +1 semitone (tempo kept)", lambda x, *_: librosa_fx(x, "pitch", 1.0), 0.80, "≥ 80 %"),
        Attack("pitch -1 semitone (tempo kept)", lambda x, *_: librosa_fx(x, "pitch", -1.0), 0.80, "≥ 80 %"),
        Attack("time stretch +3 % (pitch kept)", lambda x, *_: librosa_fx(x, "stretch", 1.03), 0.80, "≥ 80 %"),
        Attack("time stretch -3 % (pitch kept)", lambda x, *_: librosa_fx(x, "stretch", 0.97), 0.80, "≥ 80 %"),
    )


# --- the music set ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def sample32(name: str) -> np.ndarray:
    """A sonic-pi sample resampled to 32 kHz once (tiling it later costs nothing)."""
    x, sr = gt.read_sample(name)
    return gt.tiled(x, sr, x.shape[1] / sr, SR)


def stereo(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(x, (2, x.shape[1])), dtype=np.float32)


def sonic_mix(parts, rng, seconds: float = SECONDS) -> np.ndarray:
    """Layers tiled to `seconds`, each from a random offset and at its gain ±3 dB: distinct excerpts."""
    out = 0.0
    for name, gain in parts:
        x = gt.tiled(sample32(name), SR, seconds + 8.0)
        start = int(rng.integers(0, 8 * SR))
        out = out + stereo(x[:, start:start + int(seconds * SR)]) * gain * 10 ** (rng.uniform(-3, 3) / 20)
    return out.astype(np.float32)


def fluid(tonic, mode, lead, chords, bpm, drums, seed, seconds: float = SECONDS) -> np.ndarray:
    """A FluidR3_GM render of a groundtruth piece, cut (or padded) to `seconds`."""
    notes, programs = gt.piece(tonic, mode, bars=ceil(seconds * bpm / 240), drums=drums, lead=lead,
                               chords=chords, seed=seed)
    x = gt.render(notes, programs, float(bpm), SR)[:, : int(seconds * SR)]
    return np.pad(x, ((0, 0), (0, int(seconds * SR) - x.shape[1])))


def constant(name: str, rng) -> np.ndarray:
    """Constant-envelope signals the issue says must still carry the mark."""
    t = np.arange(int(SECONDS * SR)) / SR
    if name.startswith("sine"):
        return stereo(0.5 * np.sin(2 * np.pi * (440.0 if "440" in name else 2000.0) * t)[None])
    if name.startswith("square"):
        return stereo(0.5 * np.sign(np.sin(2 * np.pi * 330.0 * t))[None])
    loud = sonic_mix(gt.MIXES["amen+garzul"], rng)
    return np.clip(loud * (4.0 / np.abs(loud).max()), -1.0, 1.0)  # 12 dB over full scale, hard-clipped


def music_set(quick: bool) -> list[tuple[str, str, np.ndarray]]:
    """(name, kind, raw audio) of every excerpt before mastering."""
    rng = np.random.default_rng([SEED, 0])
    mixes = [(" + ".join(s for s, _ in p), p) for p in list(gt.MIXES.values()) + list(SONIC_MIXES)]
    pieces = FLUID[:2] if quick else FLUID
    mixes = mixes[:4] if quick else mixes
    out = [(name, "music", sonic_mix(parts, rng)) for name, parts in mixes]
    out += [(f"FluidR3 {NOTES[p[0]]} {p[1]}, {p[2]}/{p[3]}, {p[4]} bpm"
             f"{'' if p[5] else ', no drums'}", "music", fluid(*p)) for p in pieces]
    return out + [(name, "constant", constant(name, rng)) for name in CONSTANT]


def distinct_ids(n: int) -> list[int]:
    rng, ids = np.random.default_rng([SEED, 1]), []
    while len(ids) < n:
        tid = int(rng.integers(0, 2**32))
        ids += [tid] if tid not in ids else []
    return ids


# --- robustness ------------------------------------------------------------------------------------------------

def found_ids(det: watermark.Detection) -> set[int]:
    """Every id the detection reports (a mix can carry several)."""
    return {m.track_id for m in det.marks}


def judge(ids: set[int], tid: int, second: int | None) -> str:
    if ids - {tid, second}:
        return "wrong"
    if second is None:
        return "correct" if tid in ids else "missed"
    return {2: "both", 0: "missed"}.get(len(ids), "first" if tid in ids else "second")


def audibility(mark: np.ndarray, music: np.ndarray) -> dict:
    """Mark-to-music power per 1 s window (0.5 s hop, channels summed), dB; windows of digital silence skipped."""
    pm, px = np.square(mark, dtype=np.float64).sum(0), np.square(music, dtype=np.float64).sum(0)
    ratios = []
    for s in range(0, px.size - SR + 1, SR // 2):
        p = px[s:s + SR].sum() / SR
        if p > 1e-10:
            ratios.append(10 * np.log10(pm[s:s + SR].sum() / SR / p + 1e-30))
    return {"worst_db": float(max(ratios)), "median_db": float(np.median(ratios)),
            "whole_db": float(10 * np.log10(pm.sum() / px.sum() + 1e-30)), "windows": len(ratios)}


def partner(i: int) -> int:
    """Another music excerpt to mix with (a stride, so neighbours from one source family rarely meet)."""
    n_music = sum(kind == "music" for _, kind, _ in EXCERPTS)
    return (i + 7) % n_music if (i + 7) % n_music != i else (i + 1) % n_music


def run_excerpt(job: tuple[int, bool]) -> dict:
    """Embed the excerpt's id, run every attack and detect; one core."""
    i, quick = job
    name, kind, master = EXCERPTS[i]
    j = partner(i)
    with threadpool_limits(1):
        wm = watermark.embed(master, SR, IDS[i], KEY)
        other_wm = watermark.embed(EXCERPTS[j][2], SR, IDS[j], KEY)
        out = {}
        for k, a in enumerate(attacks(quick)):
            verdicts = []
            for rep in range(a.reps):
                y = a.fn(wm, np.random.default_rng([SEED, 2, i, k, rep]), EXCERPTS[j][2], other_wm)
                verdicts.append(judge(found_ids(watermark.detect(y, SR, KEY)), IDS[i], IDS[j] if a.pair else None))
            out[a.name] = verdicts
    return {"name": name, "kind": kind, "id": IDS[i], "partner": EXCERPTS[j][0], "verdicts": out,
            "audibility": audibility(wm - master, master)}


# --- false positives -------------------------------------------------------------------------------------------

def synth(kind: str, p: float, rng, seconds: float) -> np.ndarray:
    """Synthetic clean signals: noises, tones, sweeps, near-silence, squares, clicks, chords."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind in ("white", "hiss"):
        return (rng.standard_normal((2, n)) * p).astype(np.float32)
    if kind == "pink":
        spec = np.fft.rfft(rng.standard_normal((2, n)), axis=-1) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20))
        x = np.fft.irfft(spec, n=n, axis=-1)
        return (x * p / x.std()).astype(np.float32)
    if kind == "sweep":
        f = signal.chirp(t, 50, seconds, 12000, method="logarithmic") if p == 0 else signal.chirp(t, 1000, seconds, 6000)
        return stereo(0.4 * f[None])
    tone = {"sine": lambda: np.sin(2 * np.pi * p * t), "square": lambda: np.sign(np.sin(2 * np.pi * p * t)),
            "am": lambda: np.sin(2 * np.pi * p * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)),
            "clicks": lambda: (np.arange(n) % int(SR / p) == 0) * 0.9 + rng.standard_normal(n) * 1e-3,
            "chord": lambda: sum(np.sin(2 * np.pi * p * r * t) for r in (1, 1.25, 1.5, 2)) / 4}[kind]()
    return stereo(0.4 * tone[None])


def fp_specs(quick: bool) -> list[tuple]:
    """(group, label, how to make it) of every clean source."""
    rng = np.random.default_rng([SEED, 3])
    names = sorted(p.stem for p in gt.SONIC_PI.glob("*.flac"))
    specs = [("unwatermarked masters", n, ("master", i)) for i, (n, _, _) in enumerate(EXCERPTS)]
    specs += [("sonic-pi samples, tiled", n, ("sample", n)) for n in names[:: 12 if quick else 1]]
    for k in range(4 if quick else 80):
        a, b = rng.choice(names, 2, replace=False)
        specs.append(("sonic-pi sample pairs", f"{a} + {b}", ("pair", a, b, float(rng.uniform(0.3, 1.0)))))
    more = [(1, "major", "organ", "piano", 88, False, 21), (8, "minor", "guitar", "flute", 124, True, 22),
            (2, "major", "strings", "organ", 66, False, 23), (7, "minor", "piano", "epiano", 104, True, 24),
            (9, "major", "flute", "guitar", 116, True, 25), (4, "minor", "epiano", "strings", 98, True, 26)]
    specs += [("FluidR3 renders", f"piece {p[-1]}", ("fluid", p)) for p in more[: 1 if quick else 6]]
    specs += [("synthetic", f"{k} {p:g}", ("synth", k, p)) for k, p in SYNTH[:: 4 if quick else 1]]
    return specs


def fp_audio(how: tuple, rng) -> np.ndarray:
    if how[0] == "master":
        return EXCERPTS[how[1]][2]
    if how[0] == "sample":
        return gt.tiled(sample32(how[1]), SR, 20.0)
    if how[0] == "pair":
        return sonic_mix(((how[1], 1.0), (how[2], how[3])), rng, 20.0)
    if how[0] == "fluid":
        return fluid(*how[1])
    return synth(how[1], how[2], rng, SECONDS)


def run_clean(job: tuple[int, tuple, bool]) -> dict:
    """Slide 5 s and 10 s windows over one clean source and detect in each; one core."""
    k, (group, label, how), quick = job
    with threadpool_limits(1):
        x = fp_audio(how, np.random.default_rng([SEED, 4, k]))
        hops = {5.0: 2.5, 10.0: 5.0} if quick else {5.0: 0.5, 10.0: 2.0}
        windows, hits, conf = 0, [], 0.0
        for length, hop in hops.items():
            for start in np.arange(0.0, x.shape[1] / SR - length + 1e-9, hop):
                det = watermark.detect(x[:, int(start * SR):int((start + length) * SR)], SR, KEY)
                windows, conf = windows + 1, max(conf, float(det.confidence))
                if det.found:
                    hits.append({"start_s": float(start), "length_s": length, "id": det.track_id})
    return {"group": group, "label": label, "windows": windows, "false_positives": hits, "max_confidence": conf}


# --- timing, header, report ------------------------------------------------------------------------------------

def detector_speed(masters: list[np.ndarray]) -> dict:
    """Detect time on one core (threadpool_limits(1)): median per 30 s excerpt, and a 3-minute track made of
    six different excerpts, mastered and watermarked whole."""
    with threadpool_limits(1):
        per = []
        for i, x in enumerate(masters):
            wm = watermark.embed(x, SR, IDS[i], KEY)
            t0 = time.perf_counter()
            watermark.detect(wm, SR, KEY)
            per.append(time.perf_counter() - t0)
        long, _ = master_track(np.concatenate([masters[i % len(masters)] for i in range(6)], axis=1), SR, -14.0, -1.0)
        wm = watermark.embed(long, SR, 0xC0FFEE, KEY)
        times, det = [], None
        for _ in range(3):
            t0 = time.perf_counter()
            det = watermark.detect(wm, SR, KEY)
            times.append(time.perf_counter() - t0)
    return {"per_30s_median_s": float(np.median(per)), "per_30s_max_s": float(max(per)),
            "track_3min_median_s": float(np.median(times)), "track_3min_found": bool(det.found and det.track_id == 0xC0FFEE)}


def header(n_music: int, n_const: int, n_windows: int, wall: float) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ffv = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split()[2]
    wm_hash = hashlib.sha256(Path(watermark.__file__).read_bytes()).hexdigest()[:12]
    libs = ", ".join(f"{p} {version(p)}" for p in ("numpy", "scipy", "librosa", "soxr", "threadpoolctl"))
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"# Watermark robustness {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {n_music} music excerpts + "
            f"{n_const} constant-envelope signals (30 s, 32 kHz stereo), {n_windows} clean windows; wall {wall:.0f} s\n"
            f"# {cpu}, {len(os.sched_getaffinity(0))} cores ({JOBS} worker processes, 1 thread each), load average "
            f"(1/5/15 min) {load}; Python {platform.python_version()}, {libs}, ffmpeg {ffv} (imageio-ffmpeg); "
            f"watermark.py sha256 {wm_hash}")


def pct(n: int, d: int) -> str:
    return f"{n} ({100 * n / d:.1f} %)" if d else "-"


def attack_table(rows: list[dict], quick: bool) -> list[str]:
    """Per attack over the music excerpts: trials, correct, wrong ids, missed, target and verdict."""
    out = ["| attack | trials | correct id | wrong id | missed | target | verdict |", "|---|---|---|---|---|---|---|"]
    for a in attacks(quick):
        v = Counter(x for r in rows for x in r["verdicts"][a.name])
        n = sum(v.values())
        if a.pair:
            first = v["both"] + v["first"]
            out.append(f"| {a.name}: first (louder) id | {n} | {pct(first, n)} | {v['wrong']} | {n - first - v['wrong']}"
                       " | none set | - |")
            ok, label = v["both"], a.label
            missed = n - ok - v["wrong"]
            name = f"{a.name}: both ids (2nd alone: {v['second']})"
        else:
            ok, label, missed, name = v["correct"], a.label, v["missed"], a.name
        verdict = "-" if a.target is None else ("met" if ok >= a.target * n and v["wrong"] == 0 else "NOT met")
        out.append(f"| {name} | {n} | {pct(ok, n)} | {v['wrong']} | {missed} | {label} | {verdict} |")
    return out


def constant_table(rows: list[dict], quick: bool) -> list[str]:
    """Attack x constant-envelope signal: what detect found."""
    mark = {"correct": "found", "missed": "missed", "wrong": "WRONG id", "both": "both", "first": "first only",
            "second": "2nd only"}
    out = ["| attack | " + " | ".join(r["name"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for a in attacks(quick):
        cells = [", ".join(f"{mark[k]}{f' x{c}' if a.reps > 1 else ''}" for k, c in Counter(r["verdicts"][a.name]).items())
                 for r in rows]
        out.append(f"| {a.name} | " + " | ".join(cells) + " |")
    return out


def report(res: dict, quick: bool) -> str:
    music = [r for r in res["excerpts"] if r["kind"] == "music"]
    const = [r for r in res["excerpts"] if r["kind"] == "constant"]
    wrong = sum(x == "wrong" for r in res["excerpts"] for v in r["verdicts"].values() for x in v)
    lines = [res["header"], "", "Music set: " + "; ".join(r["name"] for r in music) + ".",
             "Attacks: ffmpeg encoders through f32le pipes; mixes are float sums (not clipped); +6 dB is clipped to ±1; "
             "pitch shift and time stretch are librosa's, each channel on its own; speed changes resample with "
             "scipy resample_poly (pitch moves with speed). Verdict `met`: correct share ≥ target and no wrong id. "
             f"Crops: {1 if quick else 3} random starts per excerpt.", ""]
    lines += ["## Robustness, music excerpts (correct = found with the embedded id)", ""]
    lines += attack_table(music, quick)
    failing = [f"{r['name']} (id {r['id']:#010x}): " + ", ".join(
        f"{a} {Counter(v).most_common(1)[0][0] if len(set(v)) == 1 else dict(Counter(v))}"
        for a, v in r["verdicts"].items() if any(x not in ("correct", "both") for x in v)) for r in music]
    lines += ["", f"Wrong ids over every trial (music and constant-envelope): {wrong} (target: never).", "",
              "Misses per excerpt (attack: verdict):", ""] + [f"- {f}" for f in failing if not f.endswith(": ")]
    lines += ["", "## Constant-envelope signals (the issue: they must still carry the mark)", ""]
    lines += constant_table(const, quick)
    s = res["speed"]
    lines += ["", "## Detector speed, one core (threadpool_limits(1), this process alone)", "",
              f"- per 30 s excerpt: median {s['per_30s_median_s']:.3f} s, max {s['per_30s_max_s']:.3f} s "
              f"({len(music)} excerpts)",
              f"- one 3-minute track (six excerpts back to back, mastered, watermarked): median of 3 "
              f"{s['track_3min_median_s']:.3f} s, id found: {s['track_3min_found']} (target < 5 s: "
              f"{'met' if s['track_3min_median_s'] < 5 else 'NOT met'})", ""]
    lines += fp_table(res["clean"]) + [""] + audibility_table(res["excerpts"])
    return "\n".join(lines)


def fp_table(clean: list[dict]) -> list[str]:
    groups = defaultdict(list)
    for c in clean:
        groups[c["group"]].append(c)
    out = ["## False positives: clean (never watermarked) 5 s and 10 s windows, same key", "",
           "| source | signals | windows | false positives | highest confidence |", "|---|---|---|---|---|"]
    for g, cs in groups.items():
        out.append(f"| {g} | {len(cs)} | {sum(c['windows'] for c in cs)} | "
                   f"{sum(len(c['false_positives']) for c in cs)} | {max(c['max_confidence'] for c in cs):.2g} |")
    n, fp = sum(c["windows"] for c in clean), sum(len(c["false_positives"]) for c in clean)
    out.append(f"| **all** | {len(clean)} | {n} | {fp} | {max(c['max_confidence'] for c in clean):.2g} |")
    out += ["", f"Target: 0 in ≥ 10,000 windows: {'met' if fp == 0 and n >= 10000 else 'NOT met'}. Windows overlap "
            "(5 s every 0.5 s, 10 s every 2 s), so they are not all independent trials."]
    out += [f"- false positive: {c['label']} at {h['start_s']:g} s ({h['length_s']:g} s): id {h['id']:#010x}"
            for c in clean for h in c["false_positives"]]
    return out


def audibility_table(rows: list[dict]) -> list[str]:
    out = ["## Audibility of the mark itself (watermarked - master), 1 s windows every 0.5 s, mark/music power", "",
           "| excerpt | worst window | median window | whole excerpt | ≤ -30 dB everywhere |", "|---|---|---|---|---|"]
    for r in rows:
        a = r["audibility"]
        out.append(f"| {r['name']}{' (constant)' if r['kind'] == 'constant' else ''} | {a['worst_db']:.1f} dB | "
                   f"{a['median_db']:.1f} dB | {a['whole_db']:.1f} dB | {'yes' if a['worst_db'] <= -30 else 'NO'} |")
    worst = max(rows, key=lambda r: r["audibility"]["worst_db"])
    ok = sum(r["audibility"]["worst_db"] <= -30 for r in rows)
    return out + ["", f"Worst excerpt: {worst['name']} ({worst['audibility']['worst_db']:.1f} dB); {ok}/{len(rows)} "
                  "excerpts keep the mark ≤ -30 dB in every 1 s window."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 music excerpts, one crop each, ~500 clean windows")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with threadpool_limits(1):
        raw = music_set(args.quick)
        EXCERPTS[:] = [(name, kind, master_track(x, SR, -14.0, -1.0)[0]) for name, kind, x in raw]
    IDS[:] = distinct_ids(len(EXCERPTS))
    specs = fp_specs(args.quick)
    with mp.get_context("fork").Pool(JOBS) as pool:  # workers inherit EXCERPTS and IDS
        excerpts = pool.map(run_excerpt, [(i, args.quick) for i in range(len(EXCERPTS))], chunksize=1)
        clean = pool.map(run_clean, [(k, s, args.quick) for k, s in enumerate(specs)], chunksize=4)
    speed = detector_speed([x for _, kind, x in EXCERPTS if kind == "music"])
    n_music = sum(k == "music" for _, k, _ in EXCERPTS)
    res = {"excerpts": excerpts, "clean": clean, "speed": speed,
           "header": header(n_music, len(EXCERPTS) - n_music, sum(c["windows"] for c in clean),
                            time.perf_counter() - t0)}
    print(json.dumps(res, indent=1) if args.json else report(res, args.quick))


if __name__ == "__main__":
    main()
