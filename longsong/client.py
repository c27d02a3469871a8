"""Async Python client for longsong: submit songs, follow progress, fetch results and files.

Connection settings come from `temporalio.envconfig` (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TLS variables, the profile file), so the same code talks to the dev
server, a self-hosted cluster or Temporal Cloud.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import unquote, urlparse

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.envconfig import ClientConfig
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from longsong.atomic import replacing
from longsong.request import SongRequest, validate
from longsong.settings import Settings
from longsong.workflows.messages import ENGINE, STAGE, USER, Progress, SongJob, SongResult, Timing
from longsong.workflows.song import SongWorkflow


class SongFailed(RuntimeError):
    """The song's workflow failed, was cancelled or timed out; the message is the root cause."""


@dataclass
class SongHandle:
    workflow_id: str
    run_id: str | None
    ui_url: str
    attached: bool  # True when the request_id already existed and we attached to that run


@dataclass
class SongSummary:
    workflow_id: str
    status: str
    user_id: str
    engine: str
    stage: str
    prompt: str
    started_at: datetime | None
    closed_at: datetime | None


async def connect(address: str | None = None, namespace: str | None = None, profile: str | None = None,
                  settings: Settings | None = None) -> Client:
    """Connect with envconfig settings (explicit arguments win; without any, the dev server on
    LONGSONG_DEV_PORT); one-line error when unreachable."""
    settings = settings or Settings.from_env()
    options = ClientConfig.load_client_connect_config(profile=profile)
    options.setdefault("target_host", f"localhost:{settings.dev_port}")
    if address:
        options["target_host"] = address
    if namespace:
        options["namespace"] = namespace
    try:
        return await Client.connect(**options)
    except RuntimeError as e:
        raise ConnectionError(
            f"cannot reach the Temporal server at {options['target_host']} "
            f"(set TEMPORAL_ADDRESS, or run `longsong dev up`): {str(e).splitlines()[0]}") from None


def _status_name(status: WorkflowExecutionStatus.ValueType | None) -> str:
    if status is None:
        return "unknown"
    return WorkflowExecutionStatus.Name(status).removeprefix("WORKFLOW_EXECUTION_STATUS_").lower()


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class LongsongClient:
    """Songs on one Temporal namespace; `settings` give the task queues and activity timing."""

    def __init__(self, client: Client, settings: Settings | None = None):
        self.client = client
        self.settings = settings or Settings.from_env()

    @classmethod
    async def connect(cls, address: str | None = None, namespace: str | None = None,
                      profile: str | None = None, settings: Settings | None = None) -> "LongsongClient":
        settings = settings or Settings.from_env()
        return cls(await connect(address, namespace, profile, settings), settings)

    def ui_link(self, workflow_id: str) -> str:
        return f"{self.settings.web_ui}/namespaces/{self.client.namespace}/workflows/{workflow_id}"

    def _handle(self, workflow_id: str) -> WorkflowHandle:
        return self.client.get_workflow_handle_for(SongWorkflow.run, workflow_id)

    async def submit(self, request: SongRequest) -> SongHandle:
        """Validate (nothing starts on bad input), then start; an existing request_id is attached to."""
        req = validate(request)
        link = self.ui_link(req.request_id)
        try:
            desc = await self._handle(req.request_id).describe()
            return SongHandle(req.request_id, desc.run_id, link, True)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
        summary = f"{req.prompt[:60]} · {req.duration_s:g} s · {req.engine}"
        try:
            handle = await self.client.start_workflow(
                SongWorkflow.run,
                SongJob(req, self.settings.gpu_queue, self.settings.cpu_queue, Timing.of(self.settings)),
                id=req.request_id,
                task_queue=self.settings.cpu_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                execution_timeout=timedelta(hours=12),
                memo={"prompt": req.prompt, "duration_s": req.duration_s},
                search_attributes=TypedSearchAttributes([
                    SearchAttributePair(USER, req.user_id), SearchAttributePair(ENGINE, req.engine),
                    SearchAttributePair(STAGE, "queued"),
                ]),
                static_summary=summary,
                static_details=f"**Prompt:** {req.prompt}\n\n**Duration:** {req.duration_s:g} s  \n"
                               f"**Engine:** {req.engine} {req.model or ''}  \n**User:** {req.user_id}",
            )
        except WorkflowAlreadyStartedError:  # raced with another submit of the same request_id
            return SongHandle(req.request_id, None, link, True)
        return SongHandle(handle.id, handle.result_run_id, link, False)

    async def progress(self, workflow_id: str) -> Progress:
        p: Progress = await self._handle(workflow_id).query(SongWorkflow.progress)
        if p.stage in ("done", "failed", "cancelled"):
            return p
        aged = (datetime.now(timezone.utc) - datetime.fromisoformat(p.updated_at)).total_seconds()
        aged = max(0.0, aged)
        p.elapsed_s += aged
        if p.eta_s is not None:
            p.eta_s = max(0.0, p.eta_s - aged)
        return p

    async def status(self, workflow_id: str) -> str:
        desc = await self._handle(workflow_id).describe()
        return _status_name(desc.raw_description.workflow_execution_info.status)

    async def result(self, workflow_id: str) -> SongResult:
        try:
            return await self._handle(workflow_id).result()
        except WorkflowFailureError as e:
            raise SongFailed(f"song {workflow_id} did not complete: {_root_cause(e)}") from None

    async def wait(self, workflow_id: str, on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
                   poll_s: float = 1.0) -> SongResult:
        """The result, calling `on_progress` about every `poll_s` seconds meanwhile."""
        result = asyncio.ensure_future(self.result(workflow_id))
        try:
            while not result.done():
                if on_progress is not None:
                    try:
                        maybe = on_progress(await self.progress(workflow_id))
                        if asyncio.iscoroutine(maybe):
                            await maybe
                    except Exception:  # a query can fail while a worker restarts; keep waiting
                        pass
                await asyncio.wait([result], timeout=poll_s)
            return result.result()
        finally:
            result.cancel()

    async def cancel(self, workflow_id: str) -> None:
        await self._handle(workflow_id).cancel()

    async def list(self, user_id: str | None = None, limit: int = 20) -> list[SongSummary]:
        query = "WorkflowType = 'SongWorkflow'"
        if user_id:
            query += f" AND LongsongUserId = '{user_id}'"
        out: list[SongSummary] = []
        async for wf in self.client.list_workflows(query, limit=limit):
            sa = wf.typed_search_attributes
            memo = await wf.memo()
            out.append(SongSummary(
                workflow_id=wf.id,
                status=_status_name(wf.status),
                user_id=sa.get(USER) or "",
                engine=sa.get(ENGINE) or "",
                stage=sa.get(STAGE) or "",
                prompt=str(memo.get("prompt", "")),
                started_at=wf.start_time,
                closed_at=wf.close_time,
            ))
        return out

    async def download(self, workflow_id: str, directory: str | Path) -> dict[str, Path]:
        """Fetch the track files, metadata and waveform into `directory`: by link, else from the store."""
        res = await self.result(workflow_id)
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        storage = None
        for name, key in res.files.items():
            dest = folder / key.rsplit("/", 1)[-1]
            url = res.urls.get(name, "")
            with replacing(dest) as tmp:
                try:
                    if url.startswith("file://"):
                        shutil.copyfile(unquote(urlparse(url).path), tmp)
                    elif url.startswith(("http://", "https://")):
                        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                            shutil.copyfileobj(r, f)
                    else:
                        raise OSError("no link")
                except OSError:
                    if storage is None:
                        from longsong.storage import open_storage

                        storage = open_storage(settings=self.settings)
                    storage.get_file(key, tmp)
            paths[name] = dest
        return paths
