"""Determinism guard: recorded histories of finished songs replay against the current workflow."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from longsong.workflows import SongWorkflow
from longsong.workflows.messages import SongJob, SongResult

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_history_replays(path):
    result = asyncio.run(Replayer(workflows=[SongWorkflow]).replay_workflow(load(path), raise_on_replay_failure=False))
    assert result.replay_failure is None, result.replay_failure


@workflow.defn(name="SongWorkflow")
class ReorderedSongWorkflow:
    """A careless change: finishing scheduled before any segment. Replay must catch it."""

    @workflow.run
    async def run(self, job: SongJob) -> SongResult:
        await workflow.execute_activity("finish_song", job, task_queue=job.cpu_queue,
                                        start_to_close_timeout=timedelta(minutes=1))
        raise AssertionError("unreachable in replay")


def test_replay_catches_a_nondeterministic_change():
    assert HISTORIES, "no recorded histories: run python tests/histories/record.py"
    result = asyncio.run(Replayer(workflows=[ReorderedSongWorkflow]).replay_workflow(
        load(HISTORIES[0]), raise_on_replay_failure=False))
    assert result.replay_failure is not None
