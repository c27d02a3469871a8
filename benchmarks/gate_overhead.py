"""What the quality gate costs a MusicGen song (issue 11), side by side in one run on this machine.

Not a test. A randomly initialised model of the exact facebook/musicgen-small architecture is written with
save_pretrained and loaded through the engine's own loading code, int8 on CPU (compute does not depend on the
weight values). Measured:

- generation of one continuation window (30 s, 12 s of token context) alone;
- analysis of one window's new part (18 s; `longsong.analysis.gate.analyze`, after warm-up) alone, on
  procedural music (random weights decode to near-constant audio, which would flatter the analyzers);
- the same window generated again while the previous window is analysed in another thread, as the
  workflow pipelines them (window i judged while i+1 generates): the slowdown that contention adds.

The gate's overhead on a song is the contention slowdown plus, for the last window only, its analysis time
(nothing generates beside it). Usage: python benchmarks/gate_overhead.py [--steps N] (N < 1500 frames:
a shorter window, scaled; default the full window).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]


def checkpoint(path: Path) -> Path:
    """musicgen-small's architecture with random weights, saved like a hub checkpoint."""
    import torch
    from musicgen_speed import build_model
    from tiny_musicgen import _tokenizer
    from transformers import EncodecFeatureExtractor, MusicgenProcessor

    model = build_model("small", torch.device("cpu"))
    model.save_pretrained(path)
    MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=32000),
                      tokenizer=_tokenizer()).save_pretrained(path)
    return path


def procedural_parts(n: int) -> list[np.ndarray]:
    """New parts (18 s, mono like MusicGen) of consecutive procedural windows: what the analyzers see."""
    from longsong.engines.base import WindowRequest
    from longsong.engines.procedural import ProceduralEngine
    from longsong.request import Sampling

    engine, handoff, parts = ProceduralEngine(), None, []
    for i in range(n):
        r = engine.generate(WindowRequest("112 bpm, A minor, synthwave, driving bass", 3, 1500, 600 if i else 0,
                                          Sampling(), handoff, index=i), lambda d, t: None)
        handoff = r.handoff
        parts.append(r.audio[:, (600 if i else 0) * 640:].mean(axis=0, keepdims=True))
    return parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500, help="window length in frames (default 1500 = 30 s)")
    args = ap.parse_args()
    from longsong.analysis.gate import analyze, warm_up
    from longsong.analysis.report import Expectation, Thresholds
    from longsong.engines.base import WindowRequest
    from longsong.engines.musicgen.engine import load_engine
    from longsong.request import Sampling
    from longsong.settings import Settings

    warm_up()
    parts = procedural_parts(4)
    history = []
    times = []
    for i, part in enumerate(parts):
        t = time.perf_counter()
        _, feats = analyze(part, 32000, 18.0 * i, history, Expectation(112, "A minor"), Thresholds())
        times.append(time.perf_counter() - t)
        history.append(feats)
    analyze_s = float(np.median(times[1:]))

    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint(Path(tmp) / "musicgen-small-random")
        engine = load_engine(str(path), Settings(device="cpu", quantize="int8"))
    text = "112 bpm, A minor, synthwave, driving bass"
    first = engine.generate(WindowRequest(text, 1, args.steps, 0, Sampling(), None), lambda d, t: None)
    context = min(600, args.steps // 2)
    job = WindowRequest(text, 2, args.steps, context, Sampling(), first.handoff, index=1)

    t = time.perf_counter()
    engine.generate(job, lambda d, t: None)
    alone_s = time.perf_counter() - t

    analysed = []

    def judge_previous() -> None:  # the CPU worker judging window i while window i+1 generates
        t0 = time.perf_counter()
        analyze(parts[2], 32000, 36.0, history[:2], Expectation(112, "A minor"), Thresholds())
        analysed.append(time.perf_counter() - t0)

    worker = threading.Thread(target=judge_previous)
    t = time.perf_counter()
    worker.start()
    engine.generate(job, lambda d, t: None)
    beside_s = time.perf_counter() - t
    worker.join()

    scale = 1500 / args.steps
    slowdown = beside_s / alone_s - 1
    song_windows = 10  # a 3-minute song
    # contention costs about the stolen CPU time, whatever the window's length; the generation scales with it
    overhead = (song_windows * (beside_s - alone_s) + analyze_s) / (song_windows * alone_s * scale)
    print(f"# gate overhead, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores")
    print("| measure | seconds |")
    print("|---|---|")
    print(f"| musicgen-small int8 window ({args.steps} frames, context {context}), alone | {alone_s:.1f} |")
    print(f"| the same window while the previous one is analysed beside it | {beside_s:.1f} |")
    print(f"| analysis of one 18 s new part, alone (median of 3) | {analyze_s:.2f} |")
    print(f"| analysis beside the generation | {analysed[0]:.2f} |")
    print(f"\nanalysis / generation per window: {analyze_s / (alone_s * scale):.2%} (full 30 s window"
          f"{', scaled' if scale != 1 else ''}); contention slowdown of the window: {slowdown:+.2%}; "
          f"gate overhead on a 10-window song: {overhead:+.2%} (target <= 5 %)")


if __name__ == "__main__":
    main()
