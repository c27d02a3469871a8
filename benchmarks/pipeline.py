"""Pipeline benchmark: one 4-minute procedural song through a real dev server and real workers.

Reports wall time end to end and its split into orchestration (Temporal round trips, storage
hand-offs), generation and mastering (the CPU stage: assemble, master, watermark, encode, store),
plus mastering throughput in x real time.
Not a test: run `python benchmarks/pipeline.py [--duration 240] [--runs 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from longsong.client import LongsongClient
from longsong.devstack import dev_server
from longsong.request import SongRequest
from longsong.settings import Settings
from longsong.storage import FileStorage
from longsong.worker import in_process


def cpu_seconds() -> float:
    """CPU time of this process (both workers run in it) and of its finished children (ffmpeg): the
    work content, less sensitive than wall time to a busy shared host."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


async def one_song(address: str, storage: FileStorage, duration: float, formats: list[str]) -> dict:
    settings = Settings(gpu_queue="bench-gpu", cpu_queue="bench-cpu")
    async with in_process(address, settings, storage) as client:
        lc = LongsongClient(client, settings)
        req = SongRequest(prompt="driving synthwave", duration_s=duration, bpm=110, key="A minor",
                          formats=formats, user_id="bench")
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        handle = await lc.submit(req)
        result = await lc.wait(handle.workflow_id, poll_s=0.5)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        meta = (storage.root / result.files["metadata"]).read_text()
    m = json.loads(meta)
    generation = sum(s["generate_s"] for s in m["plan"]["segments"])
    finish = m["timings"]["finish_s"]
    return {
        "wall_s": wall,
        "generation_s": generation,
        "mastering_s": finish["wall_s"],
        "orchestration_s": wall - generation - finish["wall_s"],
        "segments": len(m["plan"]["segments"]),
        "cpu_s": cpu,
        "detail": finish,
    }


def procedural_one_core(windows: int = 4) -> float:
    """The procedural engine alone, pinned to one thread: x real time from CPU time per 30 s window."""
    from threadpoolctl import threadpool_limits

    from longsong.engines.base import WindowRequest
    from longsong.engines.procedural import ProceduralEngine
    from longsong.request import Sampling

    engine = ProceduralEngine()
    texts = ["120 bpm, A minor, house, dark", "hip hop, chill, verse", "ambient, calm, piano",
             "drum and bass, chorus"]
    with threadpool_limits(1):
        engine.generate(WindowRequest(texts[0], 1, 1500, 0, Sampling(), None), lambda d, t: None)  # warm caches
        started = time.process_time()
        for i in range(windows):
            engine.generate(WindowRequest(texts[i % len(texts)], i, 1500, 0, Sampling(), None), lambda d, t: None)
        cpu = (time.process_time() - started) / windows
    return 30.0 / cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=240)
    ap.add_argument("--runs", type=int, default=2, help="the first run also warms up imports")
    ap.add_argument("--format", action="append", dest="formats")
    args = ap.parse_args()
    formats = args.formats or ["mp3", "wav"]
    with tempfile.TemporaryDirectory() as tmp, dev_server(Path(tmp) / "t.db") as address:
        storage = FileStorage(Path(tmp) / "objects")
        runs = [asyncio.run(one_song(address, storage, args.duration, formats)) for _ in range(args.runs)]
    one_core = procedural_one_core()
    print(f"# pipeline benchmark: {args.duration:g} s procedural song, formats {formats}")
    print(f"# machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    for i, r in enumerate(runs):
        print(f"run {i + 1}: wall {r['wall_s']:.2f} s = generation {r['generation_s']:.2f} "
              f"+ mastering {r['mastering_s']:.2f} + orchestration {r['orchestration_s']:.2f}  "
              f"({r['segments']} segments; CPU {r['cpu_s']:.2f} s in workers and ffmpeg, server excluded)")
        print(f"       orchestration + mastering = {r['orchestration_s'] + r['mastering_s']:.2f} s; "
              f"mastering throughput {args.duration / r['mastering_s']:.0f}x real time; "
              f"generation {args.duration / r['generation_s']:.0f}x real time")
        print(f"       mastering (assemble, master, watermark, encode, waveform, store; encodes overlap): "
              f"{', '.join(f'{k} {v:.2f}' for k, v in r['detail'].items())}")
    print(f"procedural engine on one thread: {one_core:.0f}x real time (CPU time per 30 s window)")


if __name__ == "__main__":
    main()
