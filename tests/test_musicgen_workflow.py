"""A MusicGen song through the real workflow and workers, on a tiny random checkpoint loaded by the
same code as real ones: 3 windows, token hand-off between them, 32 kHz, exact length."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

from longsong.audio.npy import from_npy_bytes
from longsong.client import LongsongClient
from longsong.engines.registry import EngineRegistry
from longsong.frames import FRAME_RATE
from longsong.request import SongRequest
from longsong.settings import Settings
from longsong.worker import in_process

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    from longsong.engines.musicgen import load_models
    from tiny_musicgen import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("musicgen") / "tiny-mono")
    return EngineRegistry(load_models(Settings(models=(str(path),), device="cpu"))), path


def test_musicgen_song_through_workflow(temporal_address, storage, settings, tiny_registry):
    from longsong.engines.musicgen import decode_handoff

    registry, path = tiny_registry
    settings = replace(settings, keep_scratch=True)
    req = SongRequest(prompt="tiny test tune", duration_s=30, segment_s=16, overlap_s=6, crossfade_s=1,
                      engine="musicgen", top_k=50, seed=4, formats=["wav"], user_id="mg")

    async def main():
        async with in_process(temporal_address, settings, storage, registry=registry) as client:
            lc = LongsongClient(client, settings)
            return await lc.result((await lc.submit(req)).workflow_id)

    result = asyncio.run(main())
    assert result.engine == "musicgen" and result.model == str(path)
    meta = json.loads(storage.get_bytes(f"audio/mg/{req.request_id}/metadata.json"))
    assert meta["engine"]["name"] == "musicgen" and meta["engine"]["version"]  # weights revision recorded
    assert meta["sample_rate"] == 32000 and meta["duration_s"] == 30
    segs = meta["plan"]["segments"]
    assert len(segs) == 3
    # Token hand-off: each window starts from exactly the previous window's last codes.
    states = [decode_handoff(storage.get_bytes(f"work/{req.request_id}/seg-{i:03d}.a1.state"))[1] for i in range(3)]
    for prev, cur, seg in zip(states, states[1:], segs[1:]):
        context = round(seg["context_s"] * FRAME_RATE)
        np.testing.assert_array_equal(cur[:, :context], prev[:, -context:])
    for i, seg in enumerate(segs):
        audio = from_npy_bytes(storage.get_bytes(f"work/{req.request_id}/seg-{i:03d}.a1.npy"))
        assert audio.shape[1] == round((seg["end_s"] - seg["start_s"]) * 32000)
