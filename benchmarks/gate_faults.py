"""Quality-gate benchmark: does the gate catch each injected defect and let clean windows through?

Procedural songs of 10-12 windows (varied genre, mood, bpm 70-160, key), planned as the workflow
plans them; a seeded coin spoils about half the windows with a random fault (longsong/engines/faults.py)
and leaves the rest clean. Each window is analysed as the workflow will: the new part after the
context, `history` = features of the song's earlier clean windows, `expect` = the requested bpm and key.
Window 0 (no history) only gets the faults judged against the request alone: silence, tempo, key, loop.
Not a test: run `python benchmarks/gate_faults.py [--songs 22] [--seed 7] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from longsong.analysis.gate import analyze
from longsong.analysis.report import Expectation, Thresholds
from longsong.engines.base import WindowRequest
from longsong.engines.faults import FAULTS, inject
from longsong.engines.procedural import ProceduralEngine
from longsong.frames import FRAME_RATE
from longsong.plan import make_plan
from longsong.request import Sampling, SongRequest, validate

SR = 32000
GENRES = ("synthwave", "house", "techno", "rock", "pop", "jazz", "blues", "hip hop", "trap", "ambient",
          "classical", "funk", "lofi", "reggae", "drum and bass", "country", "soul", "disco", "cinematic",
          "metal", "bossa nova", "indie", "trance", "boom bap")
MOODS = ("dark", "sad", "happy", "calm", "epic", "melancholic", "uplifting", "dreamy", "aggressive", None)
TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
FIRST_WINDOW_FAULTS = ("silence", "tempo", "key", "loop")  # judged against the request alone
INTENDED = {"silence": "silence", "tempo": "tempo", "key": "key", "loop": "loop", "quiet": "loudness",
            "drums": "collapse", "copy": "copy"}


def song_request(seed: int, i: int) -> SongRequest:
    rng = np.random.default_rng([seed, i])
    genre, mood = GENRES[i % len(GENRES)], MOODS[int(rng.integers(len(MOODS)))]
    windows = 10 + i % 3
    duration = 30 + 18 * (windows - 1) - int(rng.integers(0, 12))  # last new part: 6-18 s
    key = f"{TONICS[int(rng.integers(12))]} {('major', 'minor')[int(rng.integers(2))]}"
    prompt = f"{mood + ' ' if mood else ''}{genre} track"
    return validate(SongRequest(prompt=prompt, duration_s=float(duration), genre=genre, mood=mood,
                                bpm=int(rng.integers(70, 161)), key=key, seed=int(rng.integers(2**31))))


def record(kind: str, index: int, last: bool, report, seconds: float) -> dict:
    return {"kind": kind, "index": index, "last": last, "passed": bool(report.passed),
            "failed": list(report.failed), "score": float(report.score), "seconds": seconds,
            "measures": [{"name": m.name, "value": float(m.value), "limit": float(m.limit), "score": float(m.score),
                          "verdict": m.verdict, "note": m.note} for m in report.measures]}


def run_song(args: tuple[int, int]) -> dict:
    """One song: every window analysed clean (its features feed the history), spoiled ones again."""
    seed, i = args
    req = song_request(seed, i)
    plan = make_plan(req, req.seed)
    rng = np.random.default_rng([seed, i, 1])
    engine, expect, thresholds = ProceduralEngine(), Expectation(float(req.bpm), req.key), Thresholds()
    history, handoff, rows, gen_s = [], None, [], 0.0
    for seg in plan.segments:
        t0 = time.perf_counter()
        res = engine.generate(WindowRequest(seg.text, seg.seed, seg.n_frames, seg.context_frames,
                                            Sampling.of(req), handoff, index=seg.index), lambda d, t: None)
        gen_s += time.perf_counter() - t0
        start = seg.context_frames * SR // FRAME_RATE
        start_s = (seg.start_frame + seg.context_frames) / FRAME_RATE
        last = seg is plan.segments[-1]
        spoil = rng.random() < 0.5
        kind = str(rng.choice(FIRST_WINDOW_FAULTS if seg.index == 0 else list(FAULTS)))
        t0 = time.perf_counter()
        report, features = analyze(res.audio[:, start:], SR, start_s, list(history), expect, thresholds)
        rows.append(record("clean" if not spoil else "clean-twin", seg.index, last, report,
                           time.perf_counter() - t0))
        if spoil:
            bad = inject(res.audio, start, kind, SR)
            t0 = time.perf_counter()
            report, _ = analyze(bad[:, start:], SR, start_s, list(history), expect, thresholds)
            rows.append(record(kind, seg.index, last, report, time.perf_counter() - t0))
        history.append(features)
        handoff = res.handoff
    return {"prompt": req.prompt, "bpm": req.bpm, "key": req.key, "windows": len(plan.segments),
            "generate_s": gen_s, "rows": rows}


def measure(row: dict, name: str) -> dict | None:
    return next((m for m in row["measures"] if m["name"] == name), None)


def describe(song: dict, row: dict, name: str | None) -> str:
    where = f"{song['prompt']!r} ({song['bpm']} bpm, {song['key']}) window {row['index']}"
    where += " (last)" if row["last"] else ""
    m = measure(row, name) if name else None
    if m is None:
        return f"{where}: {name or '-'} not measured; fired {row['failed'] or 'nothing'}"
    return (f"{where}: {m['name']} {m['verdict']} value {m['value']:.4g} limit {m['limit']:.4g} "
            f"score {m['score']:.2f} ({m['note']}); fired {row['failed'] or 'nothing'}")


def summarize(songs: list[dict], wall: float) -> None:
    rows = [(s, r) for s in songs for r in s["rows"]]
    by_kind = defaultdict(list)
    for s, r in rows:
        by_kind[r["kind"]].append((s, r))
    print(f"songs {len(songs)}, windows {sum(s['windows'] for s in songs)}, analyses {len(rows)}, "
          f"wall {wall:.0f} s, generation {sum(s['generate_s'] for s in songs):.0f} s")
    secs = np.array([r["seconds"] for _, r in rows])
    print(f"analysis time per window: mean {secs.mean():.2f} s, p95 {np.percentile(secs, 95):.2f} s, "
          f"max {secs.max():.2f} s\n")
    table = ["| defect | windows | caught | by its own measure | measures that fired |", "|---|---|---|---|---|"]
    caught_all = total_all = 0
    for kind in FAULTS:
        got = by_kind.get(kind, [])
        caught = [x for x in got if not x[1]["passed"]]
        own = [x for x in got if INTENDED[kind] in x[1]["failed"]]
        fired = Counter(n for _, r in got for n in r["failed"])
        caught_all, total_all = caught_all + len(caught), total_all + len(got)
        pct = 100 * len(caught) / max(1, len(got))
        table.append(f"| {kind} | {len(got)} | {len(caught)} ({pct:.0f} %) | {len(own)} ({INTENDED[kind]}) | "
                     f"{', '.join(f'{n} {c}' for n, c in fired.most_common()) or '-'} |")
        print(f"{kind:8s} caught {len(caught)}/{len(got)} ({pct:.1f} %), by {INTENDED[kind]} {len(own)}")
        for s, r in got:
            if r["passed"] or INTENDED[kind] not in r["failed"]:
                print(f"   {'MISSED' if r['passed'] else 'other '}: {describe(s, r, INTENDED[kind])}")
    print(f"\ndefects caught overall: {caught_all}/{total_all} ({100 * caught_all / max(1, total_all):.1f} %)"
          f"  target >= 98 %")
    for label, kinds in (("left clean", ("clean",)), ("all clean versions", ("clean", "clean-twin"))):
        got = [x for k in kinds for x in by_kind.get(k, [])]
        bad = [x for x in got if not x[1]["passed"]]
        fired = Counter(n for _, r in bad for n in r["failed"])
        print(f"clean windows failed ({label}): {len(bad)}/{len(got)} ({100 * len(bad) / max(1, len(got)):.1f} %)"
              f"  target <= 2 %; measures: {dict(fired) or '-'}")
        if label == "left clean":
            table.append(f"| none (clean) | {len(got)} | {len(bad)} failed ({100 * len(bad) / max(1, len(got)):.1f} %) "
                         f"| | {', '.join(f'{n} {c}' for n, c in fired.most_common()) or '-'} |")
    for s, r in by_kind.get("clean", []) + by_kind.get("clean-twin", []):
        for name in r["failed"]:
            print(f"   false alarm: {describe(s, r, name)}")
    print("\nclosest clean call per measure (lowest score over all clean versions):")
    clean = by_kind.get("clean", []) + by_kind.get("clean-twin", [])
    for name in sorted({m["name"] for _, r in clean for m in r["measures"]}):
        scored = [(m["score"], s, r) for s, r in clean if (m := measure(r, name)) and m["verdict"] != "n/a"]
        if scored:
            _, s, r = min(scored, key=lambda x: x[0])
            print(f"   {describe(s, r, name)}")
    print("\n" + "\n".join(table))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=22)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=1, help="songs analysed in parallel (processes)")
    ap.add_argument("--json", help="write every window's measures here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    jobs = [(a.seed, i) for i in range(a.songs)]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            songs = list(pool.map(run_song, jobs))
    else:
        songs = []
        for job in jobs:
            songs.append(run_song(job))
            print(f"song {job[1] + 1}/{a.songs}: {songs[-1]['prompt']!r}, {songs[-1]['windows']} windows, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    summarize(songs, time.perf_counter() - t0)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(songs, f, indent=1)


if __name__ == "__main__":
    main()
