"""Songs made from songs, against a real dev server and real workers: extend (from the end or from inside),
regenerate from a window, and every bad input refused in one line before anything starts."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import numpy as np
import pytest
from temporalio.client import Client

from longsong.audio.assemble import assemble
from longsong.audio.npy import from_npy_bytes
from longsong.client import LongsongClient
from longsong.credentials import load_signer, read, trust_anchor
from longsong.lineage import ParentError
from longsong.plan import make_plan, segment_seed
from longsong.request import InvalidRequest, Section, SongRequest, validate
from longsong.worker import in_process
from longsong.workflows.messages import SegmentJob, SegmentRecord


def parent_request(**kw) -> SongRequest:
    base = dict(prompt="warm lofi hip hop with soft keys", duration_s=84, bpm=86, key="F minor", formats=["wav"],
                user_id="owner", seed=21)
    base.update(kw)
    return SongRequest(**base)


async def generated(client: Client, workflow_id: str) -> list[SegmentJob]:
    """The generate_segment inputs a song scheduled, in order."""
    jobs = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "generate_segment":
                [job] = await client.data_converter.decode(attrs.input.payloads, [SegmentJob])
                jobs.append(job)
    return jobs


def manifest(storage, result) -> dict:
    return json.loads(storage.get_bytes(result.files["metadata"]))


def pre_master(storage, meta: dict) -> np.ndarray:
    """The song's crossfaded track before mastering, rebuilt from the windows its folder keeps."""
    records = [SegmentRecord.from_json(storage.get_bytes(w["record"])) for w in meta["windows"]]
    windows = [from_npy_bytes(storage.get_bytes(w["audio"])) for w in meta["windows"]]
    req = SongRequest(**{**meta["request"], "sections": [Section(**s) for s in meta["request"]["sections"]]})
    plan = replace(make_plan(req, meta["seed"]), segments=[r.segment for r in records])
    track, _ = assemble(windows, plan, records[0].outcome.sample_rate)
    return track


def test_extend_and_regenerate_reuse_the_parents_windows(temporal_address, settings, storage, tmp_path):
    settings = replace(settings, storage=storage.url)  # the client reads the parent from the workers' store

    async def main():
        async with in_process(temporal_address, settings, storage, signer=load_signer(settings)) as client:
            lc = LongsongClient(client, settings)
            parent = await lc.submit(parent_request())
            p = await lc.result(parent.workflow_id)
            runs = {}
            for name, start in {
                "extend": lambda: lc.extend(parent.workflow_id, 40, user_id="owner"),
                "extend_from": lambda: lc.extend(parent.workflow_id, 30, user_id="owner", from_s=40,
                                                 sections=[Section(0, "bridge, sparse keys")], outro=True),
                "regenerate": lambda: lc.regenerate(parent.workflow_id, 2, user_id="owner", seed=99),
            }.items():
                handle = await start()
                runs[name] = (await lc.result(handle.workflow_id), await generated(client, handle.workflow_id))
            return p, await generated(client, parent.workflow_id), runs

    p, p_jobs, runs = asyncio.run(main())
    pm = manifest(storage, p)
    assert [w["end_s"] for w in pm["windows"]] == [30, 48, 66, 84]
    assert all(w["inherited_from"] is None for w in pm["windows"])

    # extend from the end: the four windows reused as they are, three new ones continue from the last state
    child, jobs = runs["extend"]
    cm = manifest(storage, child)
    assert child.parent_id == p.request_id and child.duration_s == pytest.approx(124)
    assert cm["parent"] == {"request_id": p.request_id, "kept_windows": 4, "from_s": 84.0}
    assert min(j.segment.index for j in jobs) == 4 and {j.segment.index for j in jobs} == {4, 5, 6}
    assert jobs[0].handoff_key == pm["windows"][3]["state"]  # continues from the parent's stored hand-off
    for i in range(4):
        w, pw = cm["windows"][i], pm["windows"][i]
        assert w["inherited_from"] == p.request_id
        assert storage.get_bytes(w["audio"]) == storage.get_bytes(pw["audio"])
        assert cm["plan"]["segments"][i]["generate_s"] == pm["plan"]["segments"][i]["generate_s"]  # not re-run
        assert child.windows[i].inherited
    seam = round(cm["seams"][3]["start_s"] * 32000)  # the first seam that involves a new window
    assert np.array_equal(pre_master(storage, cm)[:, :seam], pre_master(storage, pm)[:, :seam])
    (wav := tmp_path / "child.wav").write_bytes(storage.get_bytes(child.files["wav"]))
    creds = read(wav, trust_anchor(settings))  # the content credentials name the parent song
    assert creds.trusted and creds.parent == creds.claim["parent_id"] == p.request_id, creds

    # extend from inside the song: windows ending at or before 40 s are kept (window 0), the rest is new
    child, jobs = runs["extend_from"]
    cm = manifest(storage, child)
    assert cm["parent"]["kept_windows"] == 1 and cm["parent"]["from_s"] == 30
    assert child.duration_s == pytest.approx(60) and min(j.segment.index for j in jobs) == 1
    assert jobs[0].handoff_key == pm["windows"][0]["state"]
    assert "bridge, sparse keys" in jobs[0].segment.text and "outro" in cm["plan"]["segments"][-1]["text"]

    # regenerate from window 2 with another seed: windows 0-1 kept, 2-3 made anew with the new seed
    child, jobs = runs["regenerate"]
    cm = manifest(storage, child)
    assert child.duration_s == pytest.approx(84) and child.seed == 99
    assert {j.segment.index for j in jobs} == {2, 3}
    assert [j.segment.seed for j in jobs if j.reroll == 0] == [segment_seed(99, 2), segment_seed(99, 3)]
    for i in (0, 1):
        assert storage.get_bytes(cm["windows"][i]["audio"]) == storage.get_bytes(pm["windows"][i]["audio"])
    assert storage.get_bytes(cm["windows"][3]["audio"]) != storage.get_bytes(pm["windows"][3]["audio"])
    assert len([j for j in p_jobs if j.reroll == 0]) == 4


def test_bad_parents_and_ranges_are_one_line_and_start_nothing(temporal_address, settings, storage):
    owner = f"own{uuid.uuid4().hex[:8]}"
    settings = replace(settings, storage=storage.url)

    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            parent = await lc.submit(parent_request(user_id=owner))
            p = await lc.result(parent.workflow_id)
            idle = replace(settings, gpu_queue=f"nobody-{uuid.uuid4().hex[:6]}", cpu_queue=f"nobody-{uuid.uuid4().hex[:6]}")
            running = await LongsongClient(client, idle).submit(parent_request(user_id=owner, request_id=uuid.uuid4().hex))
            old = await lc.submit(parent_request(user_id=owner, request_id=uuid.uuid4().hex, duration_s=40))
            o = await lc.result(old.workflow_id)
            # a song stored before windows were kept: its manifest has no "windows"
            meta = manifest(storage, o)
            del meta["windows"]
            storage.put_bytes(o.files["metadata"], json.dumps(meta).encode(), "application/json")
            pid, errors = p.request_id, {}
            cases = {
                "missing": lc.extend("no-such-song", 30, user_id=owner),
                "running": lc.extend(running.workflow_id, 30, user_id=owner),
                "other user": lc.extend(pid, 30, user_id="intruder"),
                "past the end": lc.extend(pid, 30, user_id=owner, from_s=100),
                "first window": lc.extend(pid, 30, user_id=owner, from_s=10),
                "no duration": lc.extend(pid, 0, user_id=owner),
                "window 0": lc.regenerate(pid, 0, user_id=owner),
                "window 4": lc.regenerate(pid, 4, user_id=owner),
                "no states": lc.extend(o.request_id, 30, user_id=owner),
                "rerolls": lc.extend(pid, 30, user_id=owner, max_rerolls=9),
            }
            for name, call in cases.items():
                try:
                    await call
                    errors[name] = None
                except InvalidRequest as e:
                    errors[name] = e
            songs = {s.workflow_id for s in await lc.list(user_id=owner, limit=100)}
            await client.get_workflow_handle(running.workflow_id).terminate("test over")
            return pid, running.workflow_id, o.request_id, errors, songs

    pid, running, old, errors, songs = asyncio.run(main())
    expected = {
        "missing": r"^parent_id: no song no-such-song in namespace",
        "running": rf"^parent_id: song {running} is running, not finished",
        "other user": rf"^parent_id: song {pid} belongs to another user than intruder$",
        "past the end": r"^from_s: must be a time within the song, 0-84 s, got 100$",
        "first window": r"^from_s: 10 s is inside the first window \(it ends at 30 s\)",
        "no duration": r"^duration_s: must be the seconds to add after 84 s \(> 0\), got 0$",
        "window 0": r"^from_window: must be 1-3 \(the song has 4 windows",
        "window 4": r"^from_window: must be 1-3 .*got 4$",
        "no states": rf"^parent_id: song {old} was made before songs kept their windows' hand-off states",
        "rerolls": r"^max_rerolls: must be an integer >= 0 and <= 5, got 9$",
    }
    for name, pattern in expected.items():
        e = errors[name]
        assert e is not None, f"{name}: accepted"
        assert "\n" not in str(e), name
        assert __import__("re").search(pattern, str(e)), f"{name}: {e}"
    assert isinstance(errors["other user"], ParentError)
    assert len(songs) == 3  # the parent, the running one and the old one: nothing else was started


def test_keep_windows_without_parent_is_refused():
    with pytest.raises(InvalidRequest, match="^keep_windows: needs parent_id"):
        validate(parent_request(keep_windows=2))
