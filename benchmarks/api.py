"""HTTP API benchmark: what the API adds to a submit, and SSE fan-out, with 20 songs in flight.

One run: a Temporal dev server; both workers in a child process (procedural engine, each window paced by a
sleep that stands in for GPU time, so 20 songs stay running without taking the CPUs); the API in another
child (two apps on one loop, uvicorn on loopback, SQLite); this process is the clients. Submit latency, side
by side in one open-loop schedule (50 requests/s, the two kinds in shuffled pairs): `POST /v1/songs` over
HTTP vs `LongsongClient.submit` straight to the same Temporal server, the same request on the same settings,
whose task queues no worker serves (the measured songs only sit; they are terminated after). SSE: 100
listeners on one running song. Not a test: `python benchmarks/api.py [--seconds 60] [--quick] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import httpx

from longsong.devstack import dev_server, free_port
from longsong.engines.procedural import ProceduralEngine
from longsong.settings import Settings

RATE, IN_FLIGHT, LISTENERS = 50.0, 20, 100
TARGET_MS = 20.0  # the API's added p99 over the Temporal start
PROMPT = "late night lo-fi with warm keys"


class PacedEngine(ProceduralEngine):
    """The procedural engine taking `pace_s` of wall time per window, asleep like a host waiting on its GPU."""

    pace_s = 30.0

    def generate(self, req, on_step):
        started = time.monotonic()
        out = super().generate(req, on_step)
        time.sleep(max(0.0, self.pace_s - (time.monotonic() - started)))
        return out


def run_workers(address: str, settings: Settings, root: str, pace_s: float) -> None:
    """Both workers; quiet below errors (the background songs are terminated mid-activity at the end)."""
    from temporalio import runtime as rt

    from longsong.engines.registry import EngineRegistry
    from longsong.storage import FileStorage
    from longsong.worker import in_process

    PacedEngine.pace_s = pace_s
    logging.disable(logging.WARNING)
    quiet = rt.Runtime(telemetry=rt.TelemetryConfig(logging=rt.LoggingConfig(rt.TelemetryFilter("ERROR", "ERROR"))))

    async def main() -> None:
        async with in_process(address, settings, FileStorage(Path(root)), EngineRegistry([PacedEngine()]),
                              runtime=quiet):
            await asyncio.Event().wait()

    asyncio.run(main())


def run_api(address: str, settings: list[Settings], db_url: str, ports: list[int], calls) -> None:
    """The served app (background songs, SSE) and the measured one (unserved queues) on one loop, one Temporal
    client, one database, as in one API process; `calls` counts its describes and queries of "sse-" songs."""
    import uvicorn
    from temporalio.client import Client, Interceptor, OutboundInterceptor

    from longsong.client import LongsongClient
    from longsong.service.app import create_app
    from longsong.service.db import Database

    class Counted(OutboundInterceptor):
        def _count(self, i: int, workflow_id: str) -> None:
            if workflow_id.startswith("sse-"):
                with calls.get_lock():
                    calls[i] += 1

        async def describe_workflow(self, input):
            self._count(0, input.id)
            return await self.next.describe_workflow(input)

        async def query_workflow(self, input):
            self._count(1, input.id)
            return await self.next.query_workflow(input)

    class Counter(Interceptor):
        def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
            return Counted(next)

    async def main() -> None:
        client, db = await Client.connect(address, interceptors=[Counter()]), Database.open(db_url)
        await asyncio.gather(*(uvicorn.Server(uvicorn.Config(
            create_app(s, LongsongClient(client, s), db), host="127.0.0.1", port=port, log_level="warning",
            access_log=False)).serve() for s, port in zip(settings, ports)))

    with asyncio.Runner(loop_factory=uvicorn.Config(None).get_loop_factory()) as runner:  # as `longsong serve`
        runner.run(main())


def served_on() -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn picks by itself (loop="auto", http="auto")."""
    return ("uvloop" if find_spec("uvloop") else "asyncio"), ("httptools" if find_spec("httptools") else "h11")


def percentiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"n": len(xs), "p50": q[49] * 1e3, "p95": q[94] * 1e3, "p99": q[98] * 1e3, "max": max(xs) * 1e3}


def stat(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its reaped children (the workers' ffmpeg)."""
    return sum(int(x) for x in stat(pid)[11:15]) / os.sysconf("SC_CLK_TCK")


def processes(children) -> dict[str, int]:
    server = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and (d / "comm").exists()
              and "temporal" in (d / "comm").read_text() and stat(d.name)[1] == str(os.getpid())]
    return {"dev server": server[0], "workers": children[0].pid, "API": children[1].pid, "clients": os.getpid()}


async def background(http: httpx.AsyncClient, temporal, tag: str, ids: list[str], window_s: float) -> None:
    """Keep IN_FLIGHT real songs running: each slot submits through the API and waits for its song's end; the
    slots start window_s / IN_FLIGHT apart, so windows and songs end evenly spread, not all at once."""

    async def slot(i: int) -> None:
        await asyncio.sleep(i * window_s / IN_FLIGHT)
        for k in range(10**6):
            rid = f"bg-{tag}-{i}-{k}"
            body = {"prompt": PROMPT, "duration_s": 60, "formats": ["mp3"], "request_id": rid}
            (await http.post("/v1/songs", json=body)).raise_for_status()
            ids.append(rid)
            with contextlib.suppress(Exception):  # a failed song frees its slot all the same
                await temporal.get_workflow_handle(rid).result()

    await asyncio.gather(*(slot(i) for i in range(IN_FLIGHT)))


async def measure(http: httpx.AsyncClient, direct, seconds: float, tag: str, ids: list[str]) -> dict:
    """Latency from the scheduled send time ("sched", what a client waits) and from the actual send ("send")."""
    from longsong.request import SongRequest

    loop = asyncio.get_running_loop()
    got = {k: {"sched": [], "send": [], "failed": 0} for k in ("api", "direct")}

    async def one(kind: str, i: int, at: float, record: bool) -> None:
        rid = f"m-{tag}-{kind}-{i}"
        ids.append(rid)
        sent = loop.time()
        try:
            if kind == "api":
                body = {"prompt": PROMPT, "duration_s": 180, "request_id": rid}
                (await http.post("/v1/songs", json=body)).raise_for_status()
            else:
                await direct.submit(SongRequest(prompt=PROMPT, duration_s=180, user_id="bench", request_id=rid))
        except Exception:  # noqa: BLE001 - counted and reported, the schedule goes on
            got[kind]["failed"] += 1
            return
        if record:
            got[kind]["sched"].append(loop.time() - at)
            got[kind]["send"].append(loop.time() - sent)

    for i in range(20):  # warm-up: connections, caches, the servers' first writes
        await asyncio.gather(one("api", -i - 1, loop.time(), False), one("direct", -i - 1, loop.time(), False))
    rng = random.Random(10)
    kinds = [k for _ in range(int(seconds * RATE / 2)) for k in rng.sample(["api", "direct"], 2)]
    t0, tasks, lag = loop.time() + 0.2, [], []
    for i, kind in enumerate(kinds):
        at = t0 + i / RATE
        await asyncio.sleep(max(0.0, at - loop.time()))
        lag.append(loop.time() - at)
        tasks.append(asyncio.create_task(one(kind, i, at, True)))
    await asyncio.gather(*tasks)
    return {**{k: {"sched": percentiles(v["sched"]), "send": percentiles(v["send"]), "failed": v["failed"]}
               for k, v in got.items()}, "schedule_lag": percentiles(lag)}


async def fan_out(http: httpx.AsyncClient, temporal, token: str, tag: str, calls) -> dict:
    """LISTENERS event streams on one 60 s song (3 paced windows): events each, `end` spread, Temporal calls."""
    sid = f"sse-{tag}"
    body = {"prompt": PROMPT, "duration_s": 60, "formats": ["mp3"], "request_id": sid}
    (await http.post("/v1/songs", json=body)).raise_for_status()
    before, started = list(calls), time.time()

    async def listen() -> tuple[int, float | None]:
        progress, ended, event = 0, None, None
        async with http.stream("GET", f"/v1/songs/{sid}/events", params={"key": token}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line == "" and event is not None:
                    progress += event == "progress"
                    ended = time.time() if event == "end" else ended
                    event = None
        return progress, ended

    got = await asyncio.gather(*(listen() for _ in range(LISTENERS)))
    desc = await temporal.get_workflow_handle(sid).describe()
    ends, counts = [e for _, e in got if e is not None], [p for p, _ in got]
    describes, queries = (a - b for a, b in zip(calls, before))
    wall = max(ends) - started if ends else float("nan")
    return {"status": desc.status.name, "song_wall_s": wall, "got_end": len(ends),
            "progress_events": [min(counts), statistics.median(counts), max(counts)],
            "close_to_first_end_ms": (min(ends) - desc.close_time.timestamp()) * 1e3 if ends else None,
            "first_to_last_end_ms": (max(ends) - min(ends)) * 1e3 if ends else None,
            "describes": describes, "queries": queries, "calls_per_s": (describes + queries) / wall}


async def terminate(temporal, ids: list[str]) -> float:
    started, gate = time.monotonic(), asyncio.Semaphore(32)

    async def one(wid: str) -> None:
        async with gate:
            with contextlib.suppress(Exception):  # already closed
                await temporal.get_workflow_handle(wid).terminate(reason="benchmark over")

    await asyncio.gather(*(one(w) for w in ids))
    return time.monotonic() - started


async def bench(address: str, measured: Settings, ports: list[int], token: str, args, calls,
                procs: dict[str, int], tag: str) -> dict:
    from temporalio.client import Client

    from longsong.client import LongsongClient

    temporal = await Client.connect(address)
    opts = {"headers": {"Authorization": f"Bearer {token}"}, "timeout": httpx.Timeout(60, read=120),
            "limits": httpx.Limits(max_connections=LISTENERS + 50, max_keepalive_connections=LISTENERS + 50)}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", **opts) as served, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[1]}", **opts) as unserved:
        for c in (served, unserved):
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        bg_ids: list[str] = []
        bg = asyncio.create_task(background(served, temporal, tag, bg_ids, args.window_s))
        await asyncio.sleep(args.window_s + 5)  # all 20 songs running
        out, ids, load = {}, [], {"start": os.getloadavg()}
        cpu0, t0 = {k: cpu_s(p) for k, p in procs.items()}, time.monotonic()
        out["submit"] = await measure(unserved, LongsongClient(temporal, measured), args.seconds, tag, ids)
        out["cores"] = {k: (cpu_s(p) - cpu0[k]) / (time.monotonic() - t0) for k, p in procs.items()}
        load["after submits"] = os.getloadavg()
        out["terminated"] = [len(ids), await terminate(temporal, ids)]
        out["sse"] = await fan_out(served, temporal, token, tag, calls)
        load["end"] = os.getloadavg()
        bg.cancel()
        await asyncio.gather(bg, return_exceptions=True)
        await terminate(temporal, bg_ids)
    return {**out, "background_songs": len(bg_ids), "load": load}


def report(r: dict, seconds: float) -> str:
    s, e = r["submit"], r["sse"]
    rows = [f"| {'POST /v1/songs' if k == 'api' else 'Temporal start (direct)'}, {b} | {s[k][b]['n']} | "
            f"{s[k]['failed']} | " + " | ".join(f"{s[k][b][q]:.1f}" for q in ("p50", "p95", "p99", "max")) + " |"
            for b in ("sched", "send") for k in ("api", "direct")]
    added = {q: s["api"]["sched"][q] - s["direct"]["sched"][q] for q in ("p50", "p99")}
    verdict = "met" if added["p99"] <= TARGET_MS else "NOT met"
    head = (f"# API benchmark {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {RATE:g} submits/s for "
            f"{seconds:g} s beside {IN_FLIGHT} songs in flight; {LISTENERS} SSE listeners\n# {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, temporalio {version('temporalio')}, uvicorn {version('uvicorn')} on "
            f"{' + '.join(served_on())}; load average (1/5 min) "
            + ", ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in r["load"].items()))
    submits = (f"**API adds p99 {added['p99']:+.1f} ms, p50 {added['p50']:+.1f} ms** (from the scheduled time; "
               f"target <= {TARGET_MS:g} ms p99: {verdict}). Client schedule lag p99 {s['schedule_lag']['p99']:.1f} "
               "ms. Cores used during the submits: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())
               + f". {r['terminated'][0]} measured songs terminated in {r['terminated'][1]:.1f} s; "
               f"{r['background_songs']} background songs started.")
    sse = (f"SSE: {e['got_end']}/{LISTENERS} listeners got `end` (song {e['status']}, {e['song_wall_s']:.0f} s); "
           f"progress events per listener min/median/max {'/'.join(f'{x:g}' for x in e['progress_events'])}; "
           f"workflow close -> first `end` {e['close_to_first_end_ms']:.0f} ms, first -> last listener's `end` "
           f"{e['first_to_last_end_ms']:.0f} ms; the API's Temporal calls for the song: {e['describes']} describes "
           f"+ {e['queries']} queries ({e['calls_per_s']:.1f}/s for all {LISTENERS} listeners).")
    return "\n".join([head, "", "| submit, latency from (ms) | n | failed | p50 | p95 | p99 | max |",
                      "|---|---|---|---|---|---|---|", *rows, "", submits, "", sse])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--quick", action="store_true", help="10 s of submits: a smoke run")
    ap.add_argument("--window-s", type=float, default=30, help="wall time of one window of a background song")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.seconds = 10 if args.quick else args.seconds
    from longsong.service import keys, quotas
    from longsong.service.db import Database

    tag, ctx = uuid.uuid4().hex[:8], mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, dev_server(Path(tmp) / "t.db") as address:
        served = Settings(home=Path(tmp) / "home", storage=(Path(tmp) / "objects").as_uri(), gpu_queue=f"gpu-{tag}",
                          cpu_queue=f"cpu-{tag}", gpu_concurrency=IN_FLIGHT + 4, shutdown_grace_s=1)
        measured = replace(served, gpu_queue=f"unserved-gpu-{tag}", cpu_queue=f"unserved-cpu-{tag}")
        db_url = f"sqlite:///{tmp}/api.db"
        db = Database.open(db_url)
        quotas.set_quota(db, "bench", default=quotas.defaults(served), concurrent=100000, daily_minutes=1e7,
                         monthly_minutes=1e8, rate_per_s=1e6, burst=1000000)
        token = keys.create_key(db, "bench", "bench").token
        db.close()
        ports, calls = [free_port(), free_port()], ctx.Array("l", 2)
        children = [ctx.Process(target=run_workers, args=(address, served, f"{tmp}/objects", args.window_s)),
                    ctx.Process(target=run_api, args=(address, [served, measured], db_url, ports, calls))]
        for c in children:
            c.start()
        try:
            result = asyncio.run(bench(address, measured, ports, token, args, calls, processes(children), tag))
        finally:
            for c in children:
                c.terminate()
                c.join(15)
                if c.is_alive():
                    c.kill()
    print(json.dumps(result, indent=1) if args.json else report(result, args.seconds))


if __name__ == "__main__":
    main()
