"""Safe upgrades with Temporal Worker Deployments, against the real dev server: a song started on build A
finishes on build A's workers (workflow tasks, GPU windows, finishing) after build B became the deployment's
current version, while a song started afterwards runs entirely on build B."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from temporalio import activity
from temporalio.api.deployment.v1 import WorkerDeploymentVersion
from temporalio.api.enums.v1 import TaskQueueType, VersioningBehavior
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    DescribeWorkerDeploymentVersionRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from longsong.client import LongsongClient
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import SongRequest
from longsong.storage import FileStorage
from longsong.worker import in_process

WAIT_S = 60.0


class BuildEngine(ProceduralEngine):
    """The procedural engine of one build: notes which songs' windows it generated, stamps its build into
    each window's details, and (with a gate) holds continuation windows until the gate opens, heartbeating."""

    def __init__(self, build: str, gate: threading.Event | None = None):
        super().__init__()
        self.build, self.gate = build, gate
        self.windows: list[str] = []  # workflow id of every window generated here

    def generate(self, req, on_step):
        self.windows.append(activity.info().workflow_id)
        if self.gate is not None and req.context_frames:
            for _ in range(int(WAIT_S / 0.1)):
                if self.gate.wait(0.1):
                    break
                on_step(0, 1)
        result = super().generate(req, on_step)
        return dataclasses.replace(result, details={**result.details, "build": self.build})


class BuildStorage(FileStorage):
    """The shared object store as one build's workers see it: records every key they write or delete."""

    def __init__(self, root, build: str):
        super().__init__(root)
        self.build = build
        self.written: list[str] = []
        self.deleted: list[str] = []

    def _publish(self, key, write):
        self.written.append(key)
        return super()._publish(key, write)

    def delete_prefix(self, prefix):
        self.deleted.append(prefix)
        return super().delete_prefix(prefix)


def song(prompt: str) -> SongRequest:
    return SongRequest(prompt=prompt, duration_s=60, bpm=120, formats=["wav"], user_id="tester", seed=5)


async def until(check, what: str):
    for _ in range(int(WAIT_S / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def make_current(client: Client, deployment: str, build: str, queues: set[tuple[str, int]]) -> datetime:
    """Once the build's version has all its task queues (its workers poll them), make it current, wait until
    the deployment's routing says so; returns when the server switched."""
    version = WorkerDeploymentVersion(deployment_name=deployment, build_id=build)

    async def registered():
        try:
            info = (await client.workflow_service.describe_worker_deployment_version(
                DescribeWorkerDeploymentVersionRequest(namespace=client.namespace, deployment_version=version)
            )).worker_deployment_version_info
        except RPCError as e:  # not known yet: the server registers a version shortly after its first poll
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            return False
        return queues <= {(q.name, q.type) for q in info.task_queue_infos}

    await until(registered, f"version {deployment}.{build} with task queues {sorted(queues)}")
    await client.workflow_service.set_worker_deployment_current_version(SetWorkerDeploymentCurrentVersionRequest(
        namespace=client.namespace, deployment_name=deployment, build_id=build, identity="test_versioning"))

    routing = []

    async def routed():
        info = (await client.workflow_service.describe_worker_deployment(DescribeWorkerDeploymentRequest(
            namespace=client.namespace, deployment_name=deployment))).worker_deployment_info
        routing.append(info.routing_config)
        return info.routing_config.current_deployment_version.build_id == build

    await until(routed, f"{deployment}.{build} to be current")
    return routing[-1].current_version_changed_time.ToDatetime(UTC)


async def workflow_tasks(client: Client, workflow_id: str) -> list[tuple[datetime, str, int]]:
    """(time, build id, versioning behavior) of every completed workflow task in the song's history."""
    tasks = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("workflow_task_completed_event_attributes"):
            attrs = event.workflow_task_completed_event_attributes
            tasks.append((event.event_time.ToDatetime(UTC), attrs.deployment_version.build_id,
                          attrs.versioning_behavior))
    return tasks


def test_song_in_flight_finishes_on_its_build_while_new_songs_go_to_the_current_one(temporal_address, settings,
                                                                                   tmp_path):
    deployment = f"longsong-test-{uuid.uuid4().hex[:12]}"
    settings_a = replace(settings, deployment=deployment, build_id="A")
    settings_b = replace(settings, deployment=deployment, build_id="B")
    queues = {(settings.cpu_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
              (settings.cpu_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
              (settings.gpu_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)}
    gate = threading.Event()
    engine_a, engine_b = BuildEngine("A", gate), BuildEngine("B")
    store_a, store_b = BuildStorage(tmp_path / "objects", "A"), BuildStorage(tmp_path / "objects", "B")
    req1, req2 = song("warm house groove, build A"), song("dark techno, build B")

    async def main():
        async with in_process(temporal_address, settings_a, store_a, EngineRegistry([engine_a])) as client:
            lc = LongsongClient(client, settings)
            await make_current(client, deployment, "A", queues)
            h1 = await lc.submit(req1)

            async def song1_waits_in_window_1():
                return engine_a.windows.count(h1.workflow_id) >= 2

            await until(song1_waits_in_window_1, "song 1's second window to start on build A")
            try:
                async with in_process(temporal_address, settings_b, store_b, EngineRegistry([engine_b])):
                    switched = await make_current(client, deployment, "B", queues)
                    h2 = await lc.submit(req2)
                    result2 = await asyncio.wait_for(lc.result(h2.workflow_id), WAIT_S)  # song 1 waits on A
                    running1 = (await client.get_workflow_handle(h1.workflow_id).describe()).status
                    gate.set()  # song 1's remaining windows and its finish are scheduled after the switch
                    result1 = await asyncio.wait_for(lc.result(h1.workflow_id), WAIT_S)
            finally:
                gate.set()
            descs = [(await client.get_workflow_handle(h.workflow_id).describe()).raw_description
                     for h in (h1, h2)]
            histories = [await workflow_tasks(client, h.workflow_id) for h in (h1, h2)]
            return (h1.workflow_id, h2.workflow_id), result1, result2, running1, switched, descs, histories

    (id1, id2), result1, result2, running1, switched, descs, histories = asyncio.run(main())
    assert running1.name == "RUNNING"  # the switch happened while song 1 was in flight
    assert result1.status == result2.status == "completed"

    # GPU queue: every window of song 1 by build A's engine, every window of song 2 by build B's
    assert engine_a.windows == [id1] * 3 and engine_b.windows == [id2] * 3
    # CPU queue: finish (track files) and cleanup of each song by its own build's workers
    assert {k for k in store_a.written if id2 in k} == set() and {k for k in store_b.written if id1 in k} == set()
    assert f"audio/tester/{id1}/metadata.json" in store_a.written
    assert f"audio/tester/{id2}/metadata.json" in store_b.written
    assert f"work/{id1}/" in store_a.deleted and f"work/{id2}/" in store_b.deleted
    for result, build in ((result1, "A"), (result2, "B")):
        meta = json.loads(store_a.get_bytes(result.files["metadata"]))
        assert meta["engine"]["details"]["build"] == build

    # Temporal's own record: pinned, every workflow task completed by the song's build
    for desc, tasks, build in zip(descs, histories, "AB"):
        info = desc.workflow_execution_info.versioning_info
        assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
        assert info.deployment_version.deployment_name == deployment
        assert info.deployment_version.build_id == build
        assert tasks and {b for _, b, _ in tasks} == {build}
        assert {v for _, _, v in tasks} == {VersioningBehavior.VERSIONING_BEHAVIOR_PINNED}
    after_switch = [b for t, b, _ in histories[0] if t > switched]
    assert len(after_switch) >= 3 and set(after_switch) == {"A"}  # windows 1, 2, finish, cleanup: still on A


def test_unset_build_id_runs_unversioned_workers(temporal_address, settings, storage):
    """The dev stack's and the other tests' configuration: no deployment, the song is not pinned. (The
    pinning must come from the versioned workers' default behavior: a behavior declared on the workflow
    makes the server refuse every workflow task of an unversioned worker.)"""
    assert settings.build_id == ""

    async def main():
        async with in_process(temporal_address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            req = replace(song("plain unversioned song"), duration_s=30)
            workflow_id = (await lc.submit(req)).workflow_id
            result = await asyncio.wait_for(lc.result(workflow_id), WAIT_S)  # a refused task would hang
            desc = (await client.get_workflow_handle(workflow_id).describe()).raw_description
            return result, desc, await workflow_tasks(client, workflow_id)

    result, desc, tasks = asyncio.run(main())
    assert result.status == "completed"
    assert not desc.workflow_execution_info.HasField("versioning_info") or \
        desc.workflow_execution_info.versioning_info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_UNSPECIFIED
    assert {(b, v) for _, b, v in tasks} == {("", VersioningBehavior.VERSIONING_BEHAVIOR_UNSPECIFIED)}
