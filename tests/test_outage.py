"""Storage outages are waited out: S3 calls retry transient failures with backoff until LONGSONG_STORAGE_RETRY_S
has passed, heartbeating the activity meanwhile; past the budget the song fails with one line naming the
endpoint and the cause. The long tests freeze the real (moto) S3 server with SIGSTOP in the middle of a song
run by the real workflow and in-process workers."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import pytest
import urllib3
from temporalio.converter import default as default_converter
from temporalio.exceptions import ApplicationError, CancelledError

from longsong.activities.errors import classified, install_storage_heartbeat
from longsong.client import LongsongClient, SongFailed
from longsong.request import SongRequest
from longsong.storage import StorageUnavailable
from longsong.storage.base import set_waiting_hook, waiting_hook
from longsong.storage.s3 import S3Storage
from longsong.storage.s3 import errors as s3_errors
from longsong.storage.s3.errors import Caller
from longsong.storage.tracks import complete_tracks, incomplete_tracks, track_keys
from longsong.worker import in_process
from s3_server import S3TestServer, new_bucket_name, shared_s3_server

REFUSED = urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] "
                                                      "Connection refused")


@pytest.fixture
def hook():
    """The workers' storage hook (heartbeat the activity while waiting), as serve() installs it; restored after."""
    previous = waiting_hook()
    install_storage_heartbeat()
    yield
    set_waiting_hook(previous)


# ------------------------------------------------------------------------------------------ the wait itself


def test_transient_failures_are_retried_until_the_budget_then_one_line(monkeypatch):
    monkeypatch.setattr(s3_errors, "WAIT_REPORT_S", 0.1)
    told: list[tuple[float, str]] = []
    previous = set_waiting_hook(lambda message: told.append((time.monotonic(), message)))
    calls: list[float] = []

    def refused():
        calls.append(time.monotonic())
        raise REFUSED

    try:
        call = Caller("bucket", "", "http://127.0.0.1:9", retry_s=1.5, base_delay=0.2, max_delay=0.8)
        began = time.monotonic()
        with pytest.raises(StorageUnavailable) as e:
            call("upload", refused, "work/r/seg-000.npy")
    finally:
        set_waiting_hook(previous)
    assert 1.5 <= time.monotonic() - began < 2.5
    assert re.fullmatch(r"storage unreachable at http://127\.0\.0\.1:9: connection refused \(waited 1\.[5-9] s\)",
                        str(e.value)), str(e.value)
    assert e.value.budget_exhausted and isinstance(e.value.__cause__, urllib3.exceptions.NewConnectionError)
    # exponential backoff, capped: gaps grow, none above max_delay (plus scheduling slack)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert 4 <= len(calls) <= 10 and max(gaps) < 0.8 + 0.15 and gaps[-2] > gaps[0] / 2
    # the hook hears of every sleep, and at least every WAIT_REPORT_S while sleeping
    assert told and all("storage unreachable at http://127.0.0.1:9: connection refused; retrying S3 upload" in m
                        for _, m in told)
    beats = [t for t, _ in told]
    assert max(b - a for a, b in zip(beats, beats[1:])) < 0.1 + 0.25  # the longest gap is a request, not a sleep
    assert len(told) >= len(calls) - 1


def test_a_hook_that_raises_ends_the_wait():
    """An activity's cancellation arrives through its heartbeat: the storage call stops waiting at once."""
    def cancelled(message):
        raise CancelledError("cancelled")

    previous = set_waiting_hook(cancelled)
    try:
        with pytest.raises(CancelledError):
            Caller("bucket", "", "http://127.0.0.1:9", retry_s=60)("list", lambda: (_ for _ in ()).throw(REFUSED))
    finally:
        set_waiting_hook(previous)


def test_exhausted_budget_is_not_retried_by_temporal():
    with pytest.raises(ApplicationError) as e:
        with classified():
            raise StorageUnavailable("storage unreachable at http://s3:9000: connection refused (waited 300 s)",
                                     301.0, True)
    assert e.value.non_retryable and e.value.type == "StorageUnavailable"
    assert e.value.message == "storage unreachable at http://s3:9000: connection refused (waited 300 s)"
    assert e.value.__cause__ is None  # the client shows the deepest cause: this message, not urllib3's
    with pytest.raises(StorageUnavailable):  # no budget (LONGSONG_STORAGE_RETRY_S=0): Temporal's retries
        with classified():
            raise StorageUnavailable("storage unreachable at http://s3:9000: connection refused (not retried)")


def test_heartbeat_hook_is_a_no_op_outside_activities(hook):
    call = Caller("bucket", "", "http://127.0.0.1:9", retry_s=0.3, base_delay=0.1)
    with pytest.raises(StorageUnavailable):
        call("list", lambda: (_ for _ in ()).throw(REFUSED))


# ------------------------------------------------------------------------------------------ real outages


def song(**kw) -> SongRequest:
    base = dict(prompt="warm house groove", bpm=124, key="A minor", formats=["mp3"], user_id="tester", seed=7)
    base.update(kw)
    return SongRequest(**base)


class FreezingS3(S3Storage):
    """The workers' store: freezes the S3 server (SIGSTOP) right before the first upload of a key matching
    `freeze_before` (a regex), so the outage hits a known point of the song (that upload and all after it wait)."""

    server: S3TestServer
    freeze_before: str
    frozen_at: float | None = None

    def _put(self, key, source, content_type, metadata):
        if self.frozen_at is None and re.search(self.freeze_before, key):
            self.server.pause()
            self.frozen_at = time.monotonic()
        return super()._put(key, source, content_type, metadata)


def freezing_store(settings, freeze_before: str) -> FreezingS3:
    s3 = FreezingS3.from_url(f"s3://{new_bucket_name()}/songs", settings)
    s3.server, s3.freeze_before = shared_s3_server(), freeze_before
    return s3


async def _frozen(s3: FreezingS3, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while s3.frozen_at is None:
        assert time.monotonic() < deadline, f"no upload matching {s3.freeze_before} within {timeout:.0f} s"
        await asyncio.sleep(0.05)
    return s3.frozen_at


async def _activity_events(client, workflow_id: str) -> list[tuple[str, str, object]]:
    """(activity type, event kind, attributes) of the song's activity events."""
    names: dict[int, str] = {}
    out = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        for kind in ("started", "completed", "failed", "timed_out"):
            field = f"activity_task_{kind}_event_attributes"
            if event.HasField(field):
                attrs = getattr(event, field)
                out.append((names[attrs.scheduled_event_id], kind, attrs))
    return out


def test_a_90_second_outage_mid_song_is_waited_out(temporal_address, s3_env, settings, hook):
    """The S3 server frozen for 90 s as the second window stores its audio: that window's storage calls time out
    after 5 s each, retry with backoff and heartbeat (timeout 20 s) all along; once the server continues the
    song completes, every activity in its first attempt, and all its files are there."""
    settings = replace(settings, heartbeat_timeout_s=20, storage_timeout_s=5)
    s3 = freezing_store(settings, r"/seg-001(\.a\d+)?\.npy$")  # (with write-once keys: seg-001.a1.npy)
    assert (s3.timeout_s, s3.retry_s) == (5, 300)
    req = song(duration_s=40)  # two windows

    async def main():
        async with in_process(temporal_address, settings, s3) as client:
            lc = LongsongClient(client, settings)
            await lc.submit(req)
            try:
                frozen_at = await _frozen(s3)
                await asyncio.sleep(max(0.0, frozen_at + 60 - time.monotonic()))
                desc = await client.get_workflow_handle(req.request_id).describe()
                described_at = time.time()
                status_during = await lc.status(req.request_id)
                await asyncio.sleep(max(0.0, frozen_at + 90 - time.monotonic()))
            finally:
                s3.server.resume()
            outage = time.monotonic() - frozen_at
            result = await lc.result(req.request_id)
            events = await _activity_events(client, req.request_id)
            return desc, described_at, status_during, outage, result, events

    desc, described_at, status_during, outage, result, events = asyncio.run(main())
    print(f"outage survived: {outage:.1f} s")
    assert outage >= 90 and status_during == "running"
    pending = list(desc.raw_description.pending_activities)
    # a window generating (and, with the quality gate, the one before it being judged beside it)
    assert {a.activity_type.name for a in pending} <= {"generate_segment", "analyze_window"}
    assert all(a.attempt == 1 for a in pending)
    window = [a for a in pending if a.activity_type.name == "generate_segment"]
    assert len(window) == 1
    # 60 s into the outage the window is still in its first attempt and heartbeats what it waits for
    assert described_at - window[0].last_heartbeat_time.ToMicroseconds() / 1e6 < 10
    details = default_converter().payload_converter.from_payloads(list(window[0].heartbeat_details.payloads))
    assert details and re.match(rf"storage unreachable at {re.escape(s3.endpoint)}: no answer within 5 s \([^)]+\); "
                                rf"retrying S3 upload in [\d.]+ s \(waited \d+ of 300 s\)$", str(details[0])), details
    assert result.status == "completed"
    folder = f"audio/tester/{req.request_id}/"
    assert complete_tracks(s3) == [folder] and incomplete_tracks(s3) == []
    assert [k.rsplit("/", 1)[1] for k in track_keys(s3, folder)] == ["metadata.json", "track.mp3", "waveform.png"]
    assert s3.list(f"work/{req.request_id}/") == []
    assert not [e for e in events if e[1] in ("failed", "timed_out")]  # nothing retried: waited out
    assert all(attrs.attempt == 1 for _, kind, attrs in events if kind == "started")


def test_an_outage_past_the_budget_fails_the_song_with_its_cause(temporal_address, s3_env, settings, hook):
    """Budget 15 s: the S3 server frozen mid-publish (track.mp3 stored, waveform.png next), so finishing waits
    15 s and gives up, once (non-retryable); the server continues after that. The user sees one line naming the
    endpoint and the cause, and no track folder is half there."""
    settings = replace(settings, heartbeat_timeout_s=20, storage_timeout_s=5, storage_retry_s=15)
    s3 = freezing_store(settings, r"/waveform\.png$")
    req = song(duration_s=30)  # one window

    async def main():
        async with in_process(temporal_address, settings, s3) as client:
            lc = LongsongClient(client, settings)
            await lc.submit(req)
            try:
                frozen_at = await _frozen(s3)
                while not any(e[:2] == ("finish_song", "failed") for e in await _activity_events(client,
                                                                                                 req.request_id)):
                    assert time.monotonic() - frozen_at < 60, "finishing did not give up within 60 s"
                    await asyncio.sleep(0.5)
            finally:
                s3.server.resume()
            outage = time.monotonic() - frozen_at
            with pytest.raises(SongFailed) as failed:
                await lc.result(req.request_id)
            return outage, failed.value, await _activity_events(client, req.request_id)

    outage, failed, events = asyncio.run(main())
    assert outage > 15
    message = str(failed)
    assert "\n" not in message and "cleanup" not in message, message
    # (the client may show the failure's type before its message: "StorageUnavailable: storage unreachable …")
    m = re.fullmatch(rf"song {req.request_id} did not complete: (StorageUnavailable: )?storage unreachable at "
                     rf"{re.escape(s3.endpoint)}: no answer within 5 s \([^)]+\) \(waited (?P<s>\d+) s\)",
                     message)
    assert m and 15 <= int(m["s"]) <= 25, message
    finish = [(kind, attrs) for name, kind, attrs in events if name == "finish_song"]
    assert [kind for kind, _ in finish] == ["started", "failed"] and finish[0][1].attempt == 1  # not retried
    info = finish[1][1].failure.application_failure_info
    assert info.type == "StorageUnavailable" and info.non_retryable
    # track.mp3 went up before the outage: the failed song's folder must not stay half there
    assert incomplete_tracks(s3) == [] and complete_tracks(s3) == []
    assert s3.list(f"work/{req.request_id}/") == []  # the cleanup after the failure, once S3 was back
