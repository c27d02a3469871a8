"""Window analyzers against ground truth: tempo, beat grid and key accuracy, defect detection, time per window.

Ground truth (tests/groundtruth.py says where each figure comes from):
- procedural songs of this project's engine over many bpm/key/genre combinations (what it was asked);
- recorded loops of `sonic-pi-samples` (tempo from length and beat count; two tonal samples naming their key);
- pieces in every key written as MIDI and rendered by `fluidsynth` with FluidR3_GM (`fluid-soundfont-gm`).
Tempo is right when within 4 % of the truth, "octave" also accepts 2x and 0.5x; "blind" estimates use
librosa's default 120 bpm prior, "steered" ones the prior the gate uses (centred on the asked / song tempo),
and "wrong steer" gives a reference 25 % off the truth: right means the estimate did not follow it.
Defects are the gate's (longsong/engines/faults.py) injected into clean windows that had the song's earlier
windows as history. Not a test: `python benchmarks/analysis_accuracy.py [--songs 36] [--windows 4]`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict

import numpy as np

from longsong.analysis import key as keys
from longsong.analysis import tempo
from longsong.analysis.gate import analyze, warm_up
from longsong.analysis.prep import prepare
from longsong.analysis.report import Expectation, Thresholds
from longsong.engines.base import WindowRequest
from longsong.engines.faults import FAULTS, inject
from longsong.engines.procedural import ProceduralEngine
from longsong.frames import FRAME_RATE
from longsong.plan import make_plan
from longsong.request import Sampling, SongRequest, validate

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
import groundtruth as gt  # noqa: E402  (the tests' ground truth: recordings and renders of known tempo and key)

SR = 32000
GENRES = ("synthwave", "house", "techno", "rock", "pop", "jazz", "blues", "hip hop", "trap", "ambient",
          "classical", "funk", "lofi", "reggae", "drum and bass", "country", "soul", "disco", "cinematic",
          "metal", "bossa nova", "indie", "trance", "boom bap")
GRID: list[tuple[str, float, float]] = []  # (corpus, fold-peak offset from the true beats in ms, bpm)
INTENDED = {"silence": "silence", "tempo": "tempo", "key": "key", "loop": "loop", "quiet": "loudness",
            "drums": "collapse", "copy": "copy", "half-beat shift": "beat_phase"}


def tempo_hits(est: float, truth: float) -> tuple[bool, bool]:
    """(within 4 %, within 4 % after folding octaves)."""
    if not est > 0:
        return False, False
    return abs(est / truth - 1) <= 0.04, tempo.octave_ratio(est, truth)[0] <= 0.04


class Tally:
    def __init__(self):
        self.rows = defaultdict(Counter)

    def add(self, corpus: str, what: str, ok: bool) -> None:
        self.rows[(corpus, what)]["n"] += 1
        self.rows[(corpus, what)]["ok"] += bool(ok)

    def pct(self, corpus: str, what: str) -> str:
        c = self.rows.get((corpus, what))
        return f"{100 * c['ok'] / c['n']:.0f} % ({c['ok']}/{c['n']})" if c and c["n"] else "-"


def judge_tempo_est(t: Tally, corpus: str, onset: np.ndarray, truth: float) -> None:
    blind = tempo.estimate(onset).bpm
    steered = tempo.estimate(onset, truth).bpm
    wrong = tempo.estimate(onset, truth * 1.25).bpm
    for label, est in (("blind", blind), ("steered", steered), ("wrong steer", wrong)):
        strict, octave = tempo_hits(est, truth)
        t.add(corpus, f"tempo {label}", strict)
        t.add(corpus, f"tempo {label} octave", octave)


def judge_key_est(t: Tally, corpus: str, mag: np.ndarray, truth: int, mode_known: bool = True) -> None:
    est = int(np.argmax(keys.correlations(keys.chroma(mag))))
    if not mode_known:
        t.add(corpus, "key tonic", est % 12 == truth % 12)
        return
    rel = keys.relation(truth, est)
    t.add(corpus, "key exact", rel == "exact")
    t.add(corpus, "key exact+relative", rel in ("exact", "relative"))
    t.add(corpus, "key exact+rel+fifth+parallel", rel != "other")


def grid_offset(bands: np.ndarray, bpm: float, start_s: float) -> float:
    """Offset in beats of the part's grid (strongest onset comb) from the engine's (beats at 0 s, 60/bpm, ...)."""
    return tempo.peak_phase(tempo.fold(bands, 60.0 / bpm, start_s, first=True))


def spoil(audio: np.ndarray, start: int, fault: str, bpm: float) -> np.ndarray:
    """The new part with a gate fault injected, or shifted by half a beat (its first half beat dropped)."""
    if fault == "half-beat shift":
        return audio[:, start + round(SR * 30 / bpm):]
    return inject(audio, start, fault, SR)[:, start:]


def song_request(i: int) -> SongRequest:
    rng = np.random.default_rng([11, i])
    tonic, mode = keys.NAMES[i % 12], ("major", "minor")[(i // 12) % 2]
    genre = GENRES[i % len(GENRES)]
    return validate(SongRequest(prompt=f"{genre} track", duration_s=30.0 + 18 * 5, genre=genre,
                                bpm=int(rng.integers(64, 177)), key=f"{tonic} {mode}", seed=int(rng.integers(2**31))))


def procedural(t: Tally, det: dict, songs: int, windows: int, secs: list[float]) -> None:
    engine, th = ProceduralEngine(), Thresholds()
    for i in range(songs):
        req = song_request(i)
        plan = make_plan(req, req.seed)
        expect, history, handoff = Expectation(float(req.bpm), req.key), [], None
        for seg in plan.segments[:windows]:
            res = engine.generate(WindowRequest(seg.text, seg.seed, seg.n_frames, seg.context_frames,
                                                Sampling.of(req), handoff, index=seg.index), lambda d, n: None)
            handoff = res.handoff
            start = seg.context_frames * SR // FRAME_RATE
            start_s = (seg.start_frame + seg.context_frames) / FRAME_RATE
            new = res.audio[:, start:]
            p = prepare(new, SR)
            judge_tempo_est(t, "procedural", p.onset, float(req.bpm))
            judge_key_est(t, "procedural", p.mag, keys.key_index(req.key))
            GRID.append(("procedural", 1000 * grid_offset(p.onset_bands, float(req.bpm), start_s) * 60 / req.bpm,
                         float(req.bpm)))
            t0 = time.perf_counter()
            report, feats = analyze(new, SR, start_s, list(history), expect, th)
            if new.shape[1] >= 17.9 * SR:
                secs.append(time.perf_counter() - t0)
            for m in report.measures:
                if m.verdict != "n/a":
                    det[("procedural", m.name, "clean")][m.verdict] += 1
            for fault in (*FAULTS, "half-beat shift"):
                if not history and fault in ("copy", "quiet", "drums", "half-beat shift"):
                    continue
                bad = spoil(res.audio, start, fault, float(req.bpm))
                r2, _ = analyze(bad, SR, start_s, list(history), expect, th)
                m = next(m for m in r2.measures if m.name == INTENDED[fault])
                det[("procedural", INTENDED[fault], fault)][m.verdict] += 1
                det[("procedural", "any", fault)]["fail" if not r2.passed else "pass"] += 1
            history.append(feats)


def loops(t: Tally) -> None:
    for loop in gt.LOOPS:
        audio, sr = gt.read_sample(loop.name)
        truth = gt.loop_bpm(loop)
        p = prepare(gt.tiled(audio, sr, 18.0), SR)
        judge_tempo_est(t, "sonic-pi loops", p.onset, truth)
    for name, tonic, mode in gt.TONAL:
        audio, sr = gt.read_sample(name)
        p = prepare(gt.tiled(audio, sr, 18.0), SR)
        if mode is None:
            judge_key_est(t, "sonic-pi tonal", p.mag, tonic, mode_known=False)
        else:
            judge_key_est(t, "sonic-pi tonal", p.mag, tonic + (12 if mode == "minor" else 0))
            judge_key_est(t, "sonic-pi tonal", p.mag, tonic, mode_known=False)


def rendered(t: Tally, det: dict, pieces: int) -> None:
    """GM renders: 24 keys, 70-169 bpm, rotating instruments, a third without drums; 3 consecutive 18 s windows."""
    th = Thresholds()
    leads, pads = ("piano", "guitar", "flute", "epiano", "organ"), ("strings", "organ", "piano", "epiano")
    for i in range(pieces):
        tonic, mode = i % 12, ("major", "minor")[(i // 12) % 2]
        bpm = float(70 + (i * 37) % 100)
        drums = i % 3 != 2
        bars = math.ceil(3 * 18 * bpm / 240)
        notes, progs = gt.piece(tonic, mode, bars=bars, drums=drums, lead=leads[i % 5], chords=pads[i % 4], seed=i)
        audio = gt.render(notes, progs, bpm)
        corpus = "fluidsynth GM" + ("" if drums else " (no drums)")
        truth_key = tonic + (12 if mode == "minor" else 0)
        expect = Expectation(bpm, keys.key_name(truth_key))
        part = 18 * SR
        history = []
        for w in range(3):
            new = audio[:, w * part:(w + 1) * part]
            p = prepare(new, SR)
            judge_tempo_est(t, corpus, p.onset, bpm)
            judge_key_est(t, corpus, p.mag, truth_key)
            if drums:
                GRID.append((corpus, 1000 * grid_offset(p.onset_bands, bpm, w * part / SR) * 60 / bpm, bpm))
            report, feats = analyze(new, SR, w * part / SR, list(history), expect, th)
            for m in report.measures:
                if m.verdict != "n/a":
                    det[("fluidsynth", m.name, "clean")][m.verdict] += 1
            if history:
                whole = audio[:, : (w + 1) * part]
                for fault in (*FAULTS, "half-beat shift"):
                    bad = spoil(whole, w * part, fault, bpm)
                    r2, _ = analyze(bad, SR, w * part / SR, list(history), expect, th)
                    m = next(m for m in r2.measures if m.name == INTENDED[fault])
                    det[("fluidsynth", INTENDED[fault], fault)][m.verdict] += 1
            history.append(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=36, help="procedural songs (bpm 64-176, all 24 keys)")
    ap.add_argument("--windows", type=int, default=4, help="windows analysed per procedural song")
    ap.add_argument("--pieces", type=int, default=24, help="fluidsynth pieces (one per key)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    warm_up()
    t, det, secs = Tally(), defaultdict(Counter), []
    procedural(t, det, a.songs, a.windows, secs)
    loops(t)
    rendered(t, det, a.pieces)
    corpora = ("procedural", "sonic-pi loops", "sonic-pi tonal", "fluidsynth GM", "fluidsynth GM (no drums)")
    lag = float(np.median([ms for _, ms, _ in GRID]))  # onset detection lags every onset by about as much
    for corpus, ms, bpm in GRID:
        t.add(corpus, "beat grid on the beat (±0.1 beat, after the median onset lag)",
              abs((ms - lag) / 1000 * bpm / 60) <= 0.1)
    whats = sorted({w for _, w in t.rows}, key=lambda w: (not w.startswith("tempo"), w))
    print(f"wall {time.perf_counter() - t0:.0f} s; median onset lag of the beat grid {lag:+.0f} ms\n")
    print("| estimate | " + " | ".join(corpora) + " |")
    print("|---|" + "---|" * len(corpora))
    for w in whats:
        print(f"| {w} | " + " | ".join(t.pct(c, w) for c in corpora) + " |")
    print("\n| measure | corpus | clean windows passed | defect | caught by this measure |")
    print("|---|---|---|---|---|")
    for (corpus, name, kind), c in sorted(det.items()):
        if kind == "clean" or name == "any":
            continue
        clean = det.get((corpus, name, "clean"), Counter())
        n_clean = clean["pass"] + clean["fail"]
        print(f"| {name} | {corpus} | {clean['pass']}/{n_clean} | {kind} | "
              f"{c['fail']}/{c['fail'] + c['pass'] + c['n/a']} |")
    for (corpus, name, kind), c in sorted(det.items()):
        if kind == "clean" and name not in INTENDED.values():
            print(f"| {name} | {corpus} | {c['pass']}/{c['pass'] + c['fail']} | - | - |")
    s = np.array(secs)
    print(f"\nanalyze() per 18 s window (one process, after warm_up): mean {1000 * s.mean():.0f} ms, "
          f"p95 {1000 * np.percentile(s, 95):.0f} ms, max {1000 * s.max():.0f} ms over {s.size} windows")


if __name__ == "__main__":
    main()
