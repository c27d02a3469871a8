"""A MusicGen song through the real workflow and workers, on a tiny random checkpoint loaded by the
same code as real ones: 3 windows, token hand-off between them, 32 kHz, exact length."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from client import LongsongClient
from conftest import running_workers
from longsong.audio_io import from_npy_bytes
from longsong.engines.registry import EngineRegistry
from longsong.request import SongRequest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    from tiny_musicgen import build_tiny_checkpoint

    from longsong.engines.musicgen import load_models_from_env

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("musicgen") / "tiny-mono")
    mp = pytest.MonkeyPatch()
    mp.setenv("LONGSONG_MODELS", str(path))
    mp.setenv("LONGSONG_DEVICE", "cpu")
    try:
        return EngineRegistry(load_models_from_env()), path
    finally:
        mp.undo()


def test_musicgen_song_through_workflow(temporal_address, storage, queues, tiny_registry, monkeypatch):
    from longsong.engines.musicgen import decode_handoff

    registry, path = tiny_registry
    monkeypatch.setenv("LONGSONG_KEEP_SCRATCH", "1")
    req = SongRequest(prompt="tiny test tune", duration_s=30, segment_s=16, overlap_s=6, crossfade_s=1,
                      engine="musicgen", top_k=50, seed=4, formats=["wav"], user_id="mg")

    async def main():
        async with running_workers(temporal_address, storage, *queues, registry=registry) as client:
            lc = LongsongClient(client, *queues)
            return await lc.result((await lc.submit(req)).workflow_id)

    result = asyncio.run(main())
    assert result.engine == "musicgen" and result.model == str(path)
    meta = json.loads(storage.get_bytes(f"audio/mg/{req.request_id}/metadata.json"))
    assert meta["engine"]["name"] == "musicgen" and meta["engine"]["version"]  # weights revision recorded
    assert meta["sample_rate"] == 32000 and meta["duration_s"] == 30
    segs = meta["plan"]["segments"]
    assert len(segs) == 3
    # Token hand-off: each window starts from exactly the previous window's last codes.
    states = [decode_handoff(storage.get_bytes(f"work/{req.request_id}/seg-{i:03d}.state"))[1] for i in range(3)]
    for prev, cur, seg in zip(states, states[1:], segs[1:]):
        context = round(seg["context_s"] * 50)
        np.testing.assert_array_equal(cur[:, :context], prev[:, -context:])
    for i, seg in enumerate(segs):
        audio = from_npy_bytes(storage.get_bytes(f"work/{req.request_id}/seg-{i:03d}.npy"))
        assert audio.shape[1] == round((seg["end_s"] - seg["start_s"]) * 32000)
