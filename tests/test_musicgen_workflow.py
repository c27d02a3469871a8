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
    # Decode less: windows 1 and 2 reused the previous window's audio of their context and decoded only from
    # 4 frames before the seam (50 frames of warm-up); stitched, the windows are one decode of the whole song's
    # tokens within -60 dB, seams included.
    from longsong.engines.musicgen.codec import RIGHT_MARGIN_FRAMES, decode_span

    records = [json.loads(storage.get_bytes(f"work/{req.request_id}/seg-{i:03d}.a1.json")) for i in range(3)]
    froms = [int(r["outcome"]["details"]["decoded_from_frame"]) for r in records]
    assert froms == [0] + [round(s["context_s"] * FRAME_RATE) - RIGHT_MARGIN_FRAMES for s in segs[1:]]
    song = np.concatenate([states[0]] + [cur[:, round(s["context_s"] * FRAME_RATE):] for cur, s in
                                         zip(states[1:], segs[1:])], axis=1)
    engine = registry.get("musicgen", None)
    whole = decode_span(engine._model.audio_encoder, torch.from_numpy(song), 0)
    hop = 640
    for i, seg in enumerate(segs):
        audio = from_npy_bytes(storage.get_bytes(f"work/{req.request_id}/seg-{i:03d}.a1.npy")).astype(np.float64)
        start = round(seg["start_s"] * FRAME_RATE)
        end = audio.shape[1] // hop - (RIGHT_MARGIN_FRAMES if i < 2 else 0)  # the next window replaces the rest
        lo = 0 if i == 0 else froms[i] - 10  # from before this window's decoded part: the seam with the reused audio
        ref = whole[:, (start + lo) * hop:(start + end) * hop]
        err = np.sum((audio[:, lo * hop:end * hop] - ref) ** 2) / np.sum(ref ** 2)
        assert 10 * np.log10(err + 1e-300) < -60, (i, 10 * np.log10(err + 1e-300))


def test_four_songs_batched_equal_their_unbatched_runs(temporal_address, storage, settings, tmp_path_factory):
    """Four songs submitted together to a GPU worker with LONGSONG_GPU_BATCH=4 (their windows decoded in one
    loop), then the same four on a worker with batch 1: every window's codes are identical (audio to float
    rounding), and the manifests record the batches the windows ran in."""
    from longsong.engines.musicgen import load_models
    from tiny_musicgen import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("musicgen-batch") / "tiny-mono")
    settings = replace(settings, keep_scratch=True)
    prompts = ["tiny rock tune", "calm piano, slow", "dark techno with bass, minor key", "happy pop"]

    def requests(tag):
        return [SongRequest(prompt=p, duration_s=30, segment_s=16, overlap_s=6, crossfade_s=1, engine="musicgen",
                            top_k=50, seed=10 + i, formats=["wav"], user_id=f"{tag}{i}") for i, p in enumerate(prompts)]

    async def run(batch, reqs):
        registry = EngineRegistry(load_models(Settings(models=(str(path),), device="cpu", gpu_batch=batch)))
        async with in_process(temporal_address, settings, storage, registry=registry) as client:
            lc = LongsongClient(client, settings)
            handles = [await lc.submit(r) for r in reqs]
            return await asyncio.gather(*(lc.result(h.workflow_id) for h in handles))

    batched, alone = requests("b"), requests("a")
    asyncio.run(run(4, batched))
    asyncio.run(run(1, alone))
    ran_with = []
    for b, a in zip(batched, alone):
        for i in range(3):
            key = f"seg-{i:03d}.a1"
            assert storage.get_bytes(f"work/{b.request_id}/{key}.state") == \
                storage.get_bytes(f"work/{a.request_id}/{key}.state"), (b.prompt, i)  # the codes: bit-identical
            # the audio: one EnCodec call for windows finishing together rounds differently (test_batching)
            audio_b = from_npy_bytes(storage.get_bytes(f"work/{b.request_id}/{key}.npy")).astype(np.float64)
            audio_a = from_npy_bytes(storage.get_bytes(f"work/{a.request_id}/{key}.npy")).astype(np.float64)
            assert audio_b.shape == audio_a.shape
            assert 10 * np.log10(np.sum((audio_b - audio_a) ** 2) / np.sum(audio_a ** 2) + 1e-300) < -120
        segs_b = json.loads(storage.get_bytes(f"audio/{b.user_id}/{b.request_id}/metadata.json"))["plan"]["segments"]
        segs_a = json.loads(storage.get_bytes(f"audio/{a.user_id}/{a.request_id}/metadata.json"))["plan"]["segments"]
        assert all(s["batch"] == 1 for s in segs_a)
        ran_with += [s["batch"] for s in segs_b]
    assert max(ran_with) > 1 and all(1 <= n <= 4 for n in ran_with)
