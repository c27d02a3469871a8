"""SongWorkflow against a real Temporal dev server with real (in-process) workers and storage."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import replace

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from longsong.audio.npy import from_npy_bytes
from longsong.client import LongsongClient
from longsong.engines.base import TransientEngineError
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import SongRequest
from longsong.worker import in_process
from longsong.workflows import SongWorkflow
from longsong.workflows.messages import SegmentRecord, SongJob

MAX_PAYLOAD = 64 * 1024


def song(**kw) -> SongRequest:
    base = dict(prompt="warm house groove", duration_s=60, bpm=124, key="A minor", formats=["mp3", "wav"],
                user_id="tester", seed=11)
    base.update(kw)
    return SongRequest(**base)


async def payload_sizes(client: Client, workflow_id: str) -> list[int]:
    sizes = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        for field in ("activity_task_scheduled_event_attributes", "activity_task_completed_event_attributes",
                      "workflow_execution_started_event_attributes", "workflow_execution_completed_event_attributes"):
            if event.HasField(field):
                attrs = getattr(event, field)
                payloads = getattr(attrs, "input", None) or getattr(attrs, "result", None)
                if payloads is not None:
                    sizes.extend(p.ByteSize() for p in payloads.payloads)
    return sizes


def test_song_end_to_end_in_process(temporal_address, storage, settings, tmp_path):
    from longsong.credentials import SOURCE_TYPE, load_signer, read

    signer = load_signer(settings)  # the dev CA under the test's data dir, as a CPU worker makes it at start

    async def main():
        async with in_process(temporal_address, settings, storage, signer=signer) as client:
            lc = LongsongClient(client, settings)
            req = song()
            handle = await lc.submit(req)
            seen = []
            result = await lc.wait(handle.workflow_id, on_progress=seen.append, poll_s=0.2)
            progress = await lc.progress(handle.workflow_id)
            sizes = await payload_sizes(client, handle.workflow_id)
            songs = await lc.list(user_id="tester")
            return req, result, progress, seen, sizes, songs

    req, result, progress, seen, sizes, songs = asyncio.run(main())
    assert result.status == "completed" and result.seed == 11
    assert result.duration_s == pytest.approx(60, abs=1e-4)
    assert abs(result.loudness_lufs - (-14)) <= 0.5 and result.true_peak_dbtp <= -1.0
    prefix = f"audio/tester/{req.request_id}/"
    keys = set(storage.list(prefix))
    assert {k for k in keys if "/windows/" not in k} == {prefix + n for n in
                                                         ("track.mp3", "track.wav", "waveform.png", "metadata.json")}
    kinds = ("npy", "state", "json", "features", "quality.json")  # what extend/regenerate reuse
    assert {k for k in keys if "/windows/" in k} == {f"{prefix}windows/seg-{i:03d}.{kind}" for i in range(3)
                                                     for kind in kinds}
    assert storage.list(f"work/{req.request_id}/") == []  # scratch removed
    meta = json.loads(storage.get_bytes(prefix + "metadata.json"))
    assert meta["seed"] == 11 and meta["watermark"]["id"] == result.watermark_id
    assert meta["engine"]["name"] == "procedural" and len(meta["plan"]["segments"]) == 3
    assert meta["files"]["mp3"]["sha256"] and meta["files"]["wav"]["size"] > 0
    assert meta["credentials"]["signed"] == ["mp3", "wav"] and meta["credentials"]["unsigned"] == {}
    for fmt in ("mp3", "wav"):  # the stored files carry trusted content credentials naming this song
        local = tmp_path / f"track.{fmt}"
        local.write_bytes(storage.get_bytes(prefix + local.name))
        creds = read(local, (settings.home / "c2pa" / "ca.pem").read_bytes())
        assert creds.trusted and creds.digital_source_type == SOURCE_TYPE, creds.errors
        assert creds.claim["song_id"] == req.request_id and creds.claim["watermark_id"] == result.watermark_id
        canonical = json.dumps(meta["request"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert creds.claim["request_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert progress.stage == "done" and progress.percent == 100
    assert seen and [p.percent for p in seen] == sorted(p.percent for p in seen)  # progress never goes back
    assert max(sizes) < MAX_PAYLOAD, f"payload of {max(sizes)} bytes"
    assert [s.workflow_id for s in songs].count(req.request_id) == 1
    assert next(s for s in songs if s.workflow_id == req.request_id).stage == "done"


def test_largest_request_keeps_every_payload_under_64_kb(temporal_address, storage, settings):
    """The most a request can describe: 10 minutes in 10 s windows every 5 s (119 segments), the
    longest texts and 32 sections. Its plan and outcomes travel as stored records, not payloads."""
    from longsong.request import MAX_SECTIONS, Section

    req = song(prompt="p" * 2000, genre="g" * 200, mood="m" * 200, duration_s=600, segment_s=10, overlap_s=5,
               crossfade_s=2, formats=["wav"],
               sections=[Section(i * 18.0, f"{i:02d}" + "s" * 498) for i in range(MAX_SECTIONS)])

    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            handle = await lc.submit(req)
            result = await lc.wait(handle.workflow_id)
            return result, await payload_sizes(client, handle.workflow_id)

    result, sizes = asyncio.run(main())
    assert result.status == "completed" and result.duration_s == pytest.approx(600, abs=1e-4)
    assert max(sizes) < MAX_PAYLOAD, f"payload of {max(sizes)} bytes"
    meta = json.loads(storage.get_bytes(result.files["metadata"]))
    segments = meta["plan"]["segments"]
    assert len(segments) == 119 and segments[-1]["text"].endswith("31" + "s" * 498)
    assert storage.list(f"work/{req.request_id}/") == []


def test_same_request_id_attaches_instead_of_generating_again(temporal_address, storage, settings):
    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            req = song(duration_s=30)
            first = await lc.submit(req)
            second = await lc.submit(req)
            await lc.result(first.workflow_id)
            third = await lc.submit(req)
            runs = [wf async for wf in client.list_workflows(f"WorkflowId = '{req.request_id}'")]
            return first, second, third, runs

    first, second, third, runs = asyncio.run(main())
    assert not first.attached and second.attached and third.attached
    assert len(runs) == 1


def test_invalid_request_fails_workflow_without_retry(temporal_address, storage, settings):
    """The client validates first; a request that bypasses it fails non-retryably in the workflow."""
    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            bad = replace(song(), overlap_s=28)
            handle = await client.start_workflow(SongWorkflow.run, SongJob(bad, settings.gpu_queue, settings.cpu_queue),
                                                 id=bad.request_id, task_queue=settings.cpu_queue)
            with pytest.raises(WorkflowFailureError) as err:
                await handle.result()
            return bad, err.value

    bad, err = asyncio.run(main())
    assert isinstance(err.cause, ApplicationError) and err.cause.non_retryable
    assert err.cause.type == "InvalidRequest" and err.cause.message.startswith("overlap_s:")
    assert storage.list("audio/") == [] and storage.list(f"work/{bad.request_id}/") == []


def test_unknown_engine_is_not_retried(temporal_address, storage, settings):
    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            handle = await lc.submit(song(engine="musicgen", duration_s=30))
            with pytest.raises(Exception) as err:
                await lc.result(handle.workflow_id)
            events = [e async for e in client.get_workflow_handle(handle.workflow_id).fetch_history_events()]
            return str(err.value), events

    message, events = asyncio.run(main())
    assert "'musicgen' is not served" in message and "LONGSONG_ENGINES" in message
    started = [e.activity_task_started_event_attributes for e in events
               if e.HasField("activity_task_started_event_attributes")]
    assert [a.attempt for a in started][:1] == [1] and all(a.attempt == 1 for a in started)  # no retry


class SlowEngine(ProceduralEngine):
    """The procedural engine, paced like a real model: many steps, ~0.05 s each."""

    def generate(self, req, on_step):
        for step in range(400):
            time.sleep(0.05)
            on_step(step, 400)
        return super().generate(req, on_step)


def test_cancel_stops_running_segment_and_removes_scratch(temporal_address, storage, settings):
    async def main():
        registry = EngineRegistry([SlowEngine()])
        async with in_process(temporal_address, settings, storage, registry=registry) as client:
            lc = LongsongClient(client, settings)
            req = song(duration_s=120)
            handle = await lc.submit(req)
            for _ in range(100):  # until the first segment is running
                if storage.list(f"work/{req.request_id}/") or (await lc.progress(handle.workflow_id)).stage == "generating":
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            await lc.cancel(handle.workflow_id)
            with pytest.raises(Exception):
                await lc.result(handle.workflow_id)
            status = await lc.status(handle.workflow_id)
            events = [e async for e in client.get_workflow_handle(handle.workflow_id).fetch_history_events()]
            return req, status, events

    req, status, events = asyncio.run(main())
    assert status == "canceled"  # Temporal's spelling
    # stopped inside the first window: its activity was cancelled, no later window was scheduled
    assert sum(e.HasField("activity_task_scheduled_event_attributes") for e in events) == 2  # window 0, cleanup
    assert any(e.HasField("activity_task_canceled_event_attributes") for e in events)
    assert storage.list(f"work/{req.request_id}/") == []
    assert storage.list("audio/") == []


class FlakyEngine(ProceduralEngine):
    """Fails the first attempt of every continuation segment with a retryable error (like a GPU OOM)."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[int, list] = {}

    def generate(self, req, on_step):
        result = super().generate(req, on_step)
        runs = self.outputs.setdefault(req.seed, [])
        runs.append(result.audio)
        if req.context_frames and len(runs) == 1:
            raise TransientEngineError("out of memory (model procedural, batch 2, window 1500 frames)")
        return result


def test_transient_error_retry_writes_its_own_keys_and_the_same_audio(temporal_address, storage, settings):
    settings = replace(settings, keep_scratch=True)

    async def main():
        flaky = FlakyEngine()
        async with in_process(temporal_address, settings, storage,
                                   registry=EngineRegistry([flaky])) as client:
            lc = LongsongClient(client, settings)
            req = song(duration_s=45)
            await lc.result((await lc.submit(req)).workflow_id)
            meta = json.loads(storage.get_bytes(f"audio/tester/{req.request_id}/metadata.json"))
            return req, flaky, meta

    req, flaky, meta = asyncio.run(main())
    segs = meta["plan"]["segments"]
    assert [s["attempt"] for s in segs] == [1, 2]
    first, retry = flaky.outputs[segs[1]["seed"]]
    stored = from_npy_bytes(storage.get_bytes(f"work/{req.request_id}/seg-001.a2.npy"))  # attempt 2's own key
    assert not storage.exists(f"work/{req.request_id}/seg-001.a1.npy")  # attempt 1 failed before writing
    assert (first == retry).all() and (stored == retry).all()


def test_segment_keys_are_deterministic_per_attempt(temporal_address, storage, settings):
    settings = replace(settings, keep_scratch=True)

    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            req = song(duration_s=30)
            await lc.result((await lc.submit(req)).workflow_id)
            return req

    req = asyncio.run(main())
    keys = storage.list(f"work/{req.request_id}/")
    assert keys == [f"work/{req.request_id}/seg-000.a1.{kind}" for kind in ("json", "npy", "state")] + [
        f"work/{req.request_id}/seg-000.{kind}" for kind in ("features", "quality.json")]  # the gate's, one per re-roll
    stored = from_npy_bytes(storage.get_bytes(f"work/{req.request_id}/seg-000.a1.npy"))
    assert stored.shape == (2, 30 * 32000)
    record = SegmentRecord.from_json(storage.get_bytes(f"work/{req.request_id}/seg-000.a1.json"))
    assert record.segment.index == 0 and record.outcome.audio_key.endswith("seg-000.a1.npy")
    assert record.outcome.record_key.endswith("seg-000.a1.json") and record.outcome.attempt == 1


def test_song_end_to_end_on_s3(temporal_address, s3_env, settings, tmp_path):
    """The same workflow with the S3 backend (moto's server on loopback). No presigned link (a bearer
    credential) is ever in workflow history: results carry keys; links() mints links that download."""
    import urllib.request
    from datetime import timedelta

    from longsong.request import InvalidRequest
    from longsong.storage import open_storage
    from longsong.storage.tracks import complete_tracks
    from s3_server import new_bucket_name

    s3 = open_storage(f"s3://{new_bucket_name()}/songs")
    settings = replace(settings, storage=s3.url)  # the client opens the workers' store from its settings

    async def main():
        async with in_process(temporal_address, settings, s3) as client:
            lc = LongsongClient(client, settings)
            req = song(duration_s=40, formats=["mp3", "flac"])
            result = await lc.result((await lc.submit(req)).workflow_id)
            files = await lc.download(req.request_id, tmp_path / "dl")
            history = await client.get_workflow_handle(req.request_id).fetch_history()
            links = await lc.links(req.request_id)
            short = await lc.links(req.request_id, expiry=timedelta(minutes=5))
            with pytest.raises(InvalidRequest, match=r"^expiry: .*7 days"):
                await lc.links(req.request_id, expiry=timedelta(days=8))
            return req, result, files, history, links, short

    req, result, files, history, links, short = asyncio.run(main())
    # The whole history, every event: as JSON and as raw protobuf (payload bytes are base64 in the JSON).
    raw = history.to_json().encode() + b"".join(e.SerializeToString() for e in history.events)
    assert f"audio/tester/{req.request_id}/track.mp3".encode() in raw  # the scan sees payloads: keys are there
    for secret in (b"X-Amz-Signature", b"X-Amz-Credential", b"X-Amz-Algorithm", s3_env["AWS_ACCESS_KEY_ID"].encode()):
        assert secret not in raw, secret
    assert not hasattr(result, "urls")
    assert set(links) == set(result.files) == {"mp3", "flac", "waveform", "metadata"}
    for name, link in links.items():
        assert link.startswith("http://127.0.0.1") and "X-Amz-Signature=" in link and "X-Amz-Credential=" in link
        with urllib.request.urlopen(link, timeout=30) as r:
            assert r.read() == files[name].read_bytes(), name
    assert "X-Amz-Expires=300" in short["mp3"] and "X-Amz-Expires=86400" in links["mp3"]
    assert complete_tracks(s3) == [f"audio/tester/{req.request_id}/"]
    assert s3.list(f"work/{req.request_id}/") == []
    meta = json.loads(files["metadata"].read_text())
    assert meta["files"]["flac"]["size"] == files["flac"].stat().st_size
    from longsong.storage.base import sha256_file

    assert meta["files"]["mp3"]["sha256"] == sha256_file(files["mp3"])


def test_list_quotes_a_validated_user_id(temporal_address, storage, settings):
    """The user id goes into a visibility query: only an id matching the request rule, quoted. A crafted id
    never widens the query to other users' songs; o'brien is a one-line InvalidRequest, not an SQL error."""
    from longsong.request import InvalidRequest

    crafted = ("nobody' OR LongsongUserId != 'nobody", "o'brien", "alice' OR 'x'='x", "alice\n", "", "a" * 65,
               "alice OR WorkflowType = 'SongWorkflow'")

    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            alice = [await lc.submit(song(duration_s=30, user_id="alice", seed=i)) for i in (1, 2)]
            bob = await lc.submit(song(duration_s=30, user_id="bob"))
            for h in (*alice, bob):
                await lc.result(h.workflow_id)
            deadline = time.monotonic() + 20
            while True:  # visibility trails the workflows by a moment
                listed = await lc.list(user_id="alice", limit=100)
                if {h.workflow_id for h in alice} <= {s.workflow_id for s in listed} or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            answers = {}
            for bad in crafted:
                try:
                    answers[bad] = await lc.list(user_id=bad, limit=100)
                except InvalidRequest as e:
                    answers[bad] = e
            return alice, bob, listed, answers

    alice, bob, listed, answers = asyncio.run(main())
    assert {s.workflow_id for s in listed} == {h.workflow_id for h in alice}
    assert {s.user_id for s in listed} == {"alice"}
    for bad, answer in answers.items():
        assert isinstance(answer, InvalidRequest), (bad, answer)
        assert answer.field == "user_id" and "\n" not in str(answer) and str(answer).startswith("user_id: ")
