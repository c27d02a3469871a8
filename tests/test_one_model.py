"""One model per song: window 0 fixes the model and revision; a later window on a worker whose model changed
meanwhile fails without retry, naming both revisions, and the manifest records model and revision per window."""

from __future__ import annotations

import asyncio
import json

import pytest

from longsong.client import LongsongClient, SongFailed
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import SongRequest
from longsong.worker import in_process


class SwappedEngine(ProceduralEngine):
    """A model replaced under the worker while the song's second window runs (a new checkpoint behind the same id)."""

    calls = 0

    def generate(self, req, on_step):
        self.calls += 1
        if self.calls == 2:
            self.version = "3"
        return super().generate(req, on_step)


def song(request_id: str, duration_s: float = 45) -> SongRequest:
    """No quality gate: a re-roll would move which window meets the swapped revision first."""
    return SongRequest(prompt="one model", duration_s=duration_s, seed=5, formats=["wav"], user_id="m",
                       request_id=request_id, max_rerolls=0)


def test_every_window_uses_the_first_windows_revision(temporal_address, storage, settings):
    async def main():
        async with in_process(temporal_address, settings, storage, EngineRegistry([SwappedEngine()])) as client:
            lc = LongsongClient(client, settings)
            handle = await lc.submit(song("one-model-swapped", duration_s=60))
            with pytest.raises(SongFailed) as err:
                await lc.result(handle.workflow_id)
            events = [e async for e in client.get_workflow_handle(handle.workflow_id).fetch_history_events()]
            return str(err.value), events

    message, events = asyncio.run(main())
    assert "window 3 of this song must use procedural-v1 revision 2" in message and "revision 3" in message
    started = [e.activity_task_started_event_attributes.attempt for e in events
               if e.HasField("activity_task_started_event_attributes")]
    assert max(started) == 1  # not retried: no retry can bring the old revision back
    assert storage.list("audio/") == []


def test_manifest_names_model_and_revision_per_window(temporal_address, storage, settings):
    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            return await lc.result((await lc.submit(song("one-model-kept"))).workflow_id)

    result = asyncio.run(main())
    meta = json.loads(storage.get_bytes(result.files["metadata"]))
    assert [(s["model"], s["model_version"]) for s in meta["plan"]["segments"]] == [("procedural-v1", "2")] * 2
