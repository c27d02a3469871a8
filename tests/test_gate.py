"""The quality gate in a real workflow: real dev server, real workers, the real analyzers; defects injected by
the test engine (longsong.engines.faults) on chosen windows and re-rolls, never through the request."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from longsong.client import LongsongClient
from longsong.engines.faults import FaultyEngine
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import InvalidRequest, SongRequest
from longsong.worker import in_process
from longsong.workflows.messages import SegmentJob


def song(**kw) -> SongRequest:
    base = dict(prompt="driving synthwave with warm pads", duration_s=84, bpm=112, key="A minor",
                formats=["wav"], user_id="gate", seed=5)
    base.update(kw)
    return SongRequest(**base)


async def scheduled(client: Client, workflow_id: str) -> list[tuple[str, object, str]]:
    """(activity name, decoded input, summary shown in the Web UI) of every activity the song scheduled."""
    out = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            name = attrs.activity_type.name
            kind = SegmentJob if name == "generate_segment" else None
            [arg] = await client.data_converter.decode(attrs.input.payloads, [kind] if kind else None)
            [summary] = await client.data_converter.decode([event.user_metadata.summary], [str])
            out.append((name, arg, summary))
    return out


def run_song(temporal_address, settings, storage, faults, **kw):
    registry = EngineRegistry([FaultyEngine(ProceduralEngine(), faults)])

    async def main():
        async with in_process(temporal_address, settings, storage, registry) as client:
            lc = LongsongClient(client, settings)
            handle = await lc.submit(song(**kw))
            result = await lc.result(handle.workflow_id)
            progress = await lc.progress(handle.workflow_id)
            acts = await scheduled(client, handle.workflow_id)
            shown = await client.get_workflow_handle(handle.workflow_id).query(
                "__temporal_workflow_metadata", result_type=WorkflowMetadata)
            return result, progress, acts, shown.current_details

    result, progress, acts, details = asyncio.run(main())
    meta = json.loads(storage.get_bytes(result.files["metadata"]))
    meta["details"] = details  # the Web UI's current details
    return result, progress, acts, meta


@pytest.mark.parametrize("defect", ["silence", "tempo", "key", "loop", "quiet", "drums"])
def test_gate_catches_the_defect_and_the_reroll_repairs_it(temporal_address, settings, storage, defect):
    result, progress, acts, meta = run_song(temporal_address, settings, storage, {(1, 0): defect})
    assert result.quality == "passed"
    windows = {w.index: w for w in result.windows}
    assert windows[1].rerolls == 1 and windows[1].kept == 1 and windows[1].passed
    assert all(w.rerolls == 0 for i, w in windows.items() if i != 1)
    assert progress.rerolls == 1 and [w.index for w in progress.windows] == [0, 1, 2, 3]

    gens = [job for name, job, _ in acts if name == "generate_segment"]
    summaries = [summary for name, _, summary in acts]
    assert "judge window 2/4" in summaries and "judge window 2/4, re-roll 1" in summaries
    assert any(s.startswith("segment 2/4, 18–48 s, re-roll 1 (seed ") for s in summaries), summaries
    first, again = [j for j in gens if j.segment.index == 1]
    assert again.reroll == 1 and again.segment.seed == first.segment.seed + 1  # seed + attempt
    assert again.handoff_key == first.handoff_key  # the same stored context
    # The window after it continues from the kept re-roll (the speculative one from the bad try was discarded).
    kept_next = [j for j in gens if j.segment.index == 2][-1]
    assert ".r1." in kept_next.handoff_key

    w1 = meta["windows"][1]["gate"]
    assert w1["summary"]["rerolls"] == 1 and w1["summary"]["passed"]
    assert len(w1["rejected"]) == 1 and w1["rejected"][0]["failed"], w1
    assert {m["name"] for m in w1["measures"]} >= {"tempo", "key", "loudness", "silence", "loop", "clipping"}
    assert "quality gate: 1 re-roll, every kept window passed" in meta["details"]
    assert "last re-roll: window 2/4: re-roll 1 (" in meta["details"]
    assert meta["quality"] == {"gate": "on", "max_rerolls": 2, "status": "passed", "flagged_windows": [],
                               "rerolls": 1}
    assert meta["windows"][1]["seed"] == first.segment.seed + 1


def test_every_attempt_failing_keeps_the_best_and_flags_the_song(temporal_address, settings, storage):
    faults = {(2, 0): "silence", (2, 1): "quiet", (2, 2): "silence"}
    result, progress, acts, meta = run_song(temporal_address, settings, storage, faults)
    assert result.quality == "flagged"
    w2 = result.windows[2]
    assert w2.rerolls == 2 and not w2.passed and w2.kept == 1  # a quiet window scores better than silence
    assert meta["quality"]["status"] == "flagged" and meta["quality"]["flagged_windows"] == [2]
    assert "flagged: window 3/4" in meta["details"]  # ordinals for people, like the activities' "segment 3/4"
    assert len(meta["windows"][2]["gate"]["rejected"]) == 2
    assert result.duration_s == pytest.approx(84)


def test_max_rerolls_zero_turns_the_gate_off(temporal_address, settings, storage):
    result, progress, acts, meta = run_song(temporal_address, settings, storage, {(1, 0): "silence"},
                                            max_rerolls=0)
    assert result.quality == "off" and meta["quality"]["gate"] == "off"
    assert not [a for a, _, _ in acts if a == "analyze_window"]
    assert len([a for a, _, _ in acts if a == "generate_segment"]) == 4


@pytest.mark.parametrize("value", [-1, 6, 1.5, "2", True, None])
def test_max_rerolls_out_of_range_is_one_line(value):
    from longsong.request import validate

    with pytest.raises(InvalidRequest, match=r"^max_rerolls: must be an integer >= 0 and <= 5, got") as e:
        validate(song(max_rerolls=value))
    assert "\n" not in str(e.value)
