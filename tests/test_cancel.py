"""Cancel always wins: 20 songs cancelled at random moments over every stage (just submitted, generating or
waiting for a GPU slot, finishing) end cancelled, publish nothing and leave no scratch; no activity but cleanup starts after a cancel."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import replace

import pytest

from longsong.client import LongsongClient
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import SongRequest
from longsong.worker import in_process

CLEANUPS = {"cleanup_scratch", "unpublish_track"}


class PacedEngine(ProceduralEngine):
    """The procedural engine paced like a model: 30 steps of 20 ms per window, each a cancellation point."""

    def generate(self, req, on_step):
        for step in range(30):
            time.sleep(0.02)
            on_step(step, 30)
        return super().generate(req, on_step)


async def stage_reached(lc: LongsongClient, workflow_id: str, target: str, windows: int) -> str:
    """Poll until the song is in `target` (with `windows` windows done when generating); the stage seen.
    "submitted": cancelled at once, before or while its first workflow task runs."""
    if target == "submitted":
        return target
    while True:
        p = await lc.progress(workflow_id)
        if (p.stage == target and p.segments_done >= windows) or p.stage in ("done", "failed", "cancelled"):
            return p.stage
        await asyncio.sleep(0.02)


def test_twenty_cancels_at_random_moments_all_win(temporal_address, storage, settings, tmp_path):
    rng = random.Random(20261201)
    settings = replace(settings, gpu_concurrency=2)
    # many songs, two GPU slots: "generating" covers windows running and windows waiting for a GPU slot
    targets = ["submitted"] * 5 + ["generating"] * 8 + ["finishing"] * 7
    rng.shuffle(targets)

    async def one(lc: LongsongClient, i: int, target: str) -> dict:
        req = SongRequest(prompt=f"cancel drill {i}", duration_s=50, seed=i, formats=["mp3", "wav"],
                          user_id="canceller", request_id=f"cancel-{i}-{rng.randrange(10**9)}")
        handle = await lc.submit(req)
        seen = await stage_reached(lc, handle.workflow_id, target, rng.randrange(3))
        await asyncio.sleep(rng.uniform(0, 0.3))
        t0 = time.monotonic()
        await lc.cancel(handle.workflow_id)
        with pytest.raises(Exception) as err:
            await lc.result(handle.workflow_id)
        stopped = time.monotonic() - t0
        events = [e async for e in lc.client.get_workflow_handle(handle.workflow_id).fetch_history_events()]
        return {"req": req, "target": target, "seen": seen, "stop_s": stopped, "error": str(err.value),
                "status": await lc.status(handle.workflow_id), "events": events}

    async def main() -> list[dict]:
        registry = EngineRegistry([PacedEngine()])
        async with in_process(temporal_address, settings, storage, registry) as client:
            lc = LongsongClient(client, settings)
            return await asyncio.gather(*(one(lc, i, t) for i, t in enumerate(targets)))

    runs = asyncio.run(main())
    for run in runs:
        req = run["req"]
        assert run["status"] == "canceled", (run["target"], run["seen"], run["error"])
        assert storage.list(f"audio/canceller/{req.request_id}/") == [], run["seen"]
        assert storage.list(f"work/{req.request_id}/") == [], run["seen"]
        after = False
        for e in run["events"]:
            after = after or e.HasField("workflow_execution_cancel_requested_event_attributes")
            if after and e.HasField("activity_task_scheduled_event_attributes"):
                assert e.activity_task_scheduled_event_attributes.activity_type.name in CLEANUPS
    seen = {run["seen"] for run in runs}
    assert seen == {"submitted", "generating", "finishing"}, seen  # every stage was hit, none finished first
    stops = sorted(run["stop_s"] for run in runs)
    (tmp_path / "cancel-times.json").write_text(json.dumps(stops))
    print(f"\ncancels honoured {len(runs)}/20; time to stop: median {statistics.median(stops):.2f} s, "
          f"max {stops[-1]:.2f} s; stages at cancel: {sorted(run['seen'] for run in runs)}")
