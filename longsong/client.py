"""Async Python client for longsong: submit songs, follow progress, fetch results and files.

Connection settings come from `temporalio.envconfig` (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TLS variables, the profile file), so the same code talks to the dev
server, a self-hosted cluster or Temporal Cloud.

Results carry object keys only: download links (presigned on S3) are bearer credentials, so they are
minted on request by `links()` and never stored in workflow history.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Awaitable, Callable, Iterator

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowFailureError, WorkflowHandle
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
from longsong.pending import merge_pending, one_line
from longsong.request import ID_PATTERN, InvalidRequest, SongRequest, validate
from longsong.settings import MAX_LINK_EXPIRY, Settings
from longsong.workflows.messages import ENGINE, STAGE, USER, Progress, SongJob, SongResult, Timing
from longsong.workflows.song import SongWorkflow

CLOSED_STAGES = ("done", "failed", "cancelled")


class SongFailed(RuntimeError):
    """The song's workflow failed, was cancelled or timed out; the message is the root cause."""


class SongNotFound(LookupError):
    """No song (workflow) with this id in the namespace."""


class SongClosed(RuntimeError):
    """The song already completed, failed or was cancelled (e.g. nothing left to cancel)."""


class SongNotFinished(RuntimeError):
    """The song is still running: it has no files yet."""


class RequestConflict(InvalidRequest):
    """The request_id already names a song made from a different request; `differs` lists the fields."""

    def __init__(self, request_id: str, differs: list[str]):
        super().__init__("request_id", "")
        self.differs = differs
        ValueError.__init__(self, f"request_id {request_id} already names a different song "
                                  f"(differs in: {', '.join(differs)}); use another request_id")


@dataclass
class SongHandle:
    workflow_id: str
    run_id: str | None
    ui_url: str
    attached: bool  # True when the request_id already existed (same request) and we attached to that run
    status: str = "running"  # the run's status: running, completed, failed, canceled, terminated, timed_out


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
                  settings: Settings | None = None, runtime=None, interceptors=()) -> Client:
    """Connect with envconfig settings (explicit arguments win; without any, the dev server on
    LONGSONG_DEV_PORT); one-line error when unreachable. `runtime` (metrics export) and `interceptors`
    (tracing) come from longsong.telemetry in the long-running processes."""
    settings = settings or Settings.from_env()
    options = ClientConfig.load_client_connect_config(profile=profile)
    if runtime is not None:
        options["runtime"] = runtime
    if interceptors:
        options["interceptors"] = list(interceptors)
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
    return one_line(str(err)) if str(err) else type(err).__name__


def check_user_id(user_id: object) -> str:
    """The request's id rule, matched as a whole string: the only text that goes into a visibility query."""
    if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id):
        raise InvalidRequest("user_id", f"must match [A-Za-z0-9_-]{{1,64}}, got {user_id!r}")
    return user_id


def check_expiry(expiry: object) -> timedelta:
    """A link lifetime: 1 second to 7 days (the longest a SigV4 presigned link can last)."""
    if not isinstance(expiry, timedelta):
        raise InvalidRequest("expiry", f"must be a timedelta between 1 second and 7 days, got {expiry!r}")
    if not timedelta(seconds=1) <= expiry <= MAX_LINK_EXPIRY:
        raise InvalidRequest("expiry", f"must be between 1 second and 7 days (604800 s, the longest a presigned "
                                       f"S3 link lasts), got {expiry.total_seconds():g} s")
    return expiry


def _request_differences(wanted: SongRequest, existing: SongRequest) -> list[str]:
    try:  # compare like with like: the workflow input holds the validated request
        existing = validate(existing)
    except InvalidRequest:
        pass
    return [f.name for f in fields(SongRequest) if getattr(wanted, f.name) != getattr(existing, f.name)]


class LongsongClient:
    """Songs on one Temporal namespace; `settings` give the task queues, activity timing and the store."""

    def __init__(self, client: Client, settings: Settings | None = None):
        self.client = client
        self.settings = settings or Settings.from_env()
        self._storage = None

    @classmethod
    async def connect(cls, address: str | None = None, namespace: str | None = None,
                      profile: str | None = None, settings: Settings | None = None,
                      interceptors=()) -> "LongsongClient":
        settings = settings or Settings.from_env()
        return cls(await connect(address, namespace, profile, settings, interceptors=interceptors), settings)

    def ui_link(self, workflow_id: str) -> str:
        return f"{self.settings.web_ui}/namespaces/{self.client.namespace}/workflows/{workflow_id}"

    def _handle(self, workflow_id: str) -> WorkflowHandle:
        return self.client.get_workflow_handle_for(SongWorkflow.run, workflow_id)

    @contextlib.contextmanager
    def _rpc(self, workflow_id: str) -> Iterator[None]:
        """Server answers as this module's errors: an unknown id is SongNotFound, a lost server ConnectionError."""
        try:
            yield
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise SongNotFound(f"no song {workflow_id} in namespace {self.client.namespace}") from None
            if e.status == RPCStatusCode.UNAVAILABLE:
                raise ConnectionError(f"lost the Temporal server at {self.client.service_client.config.target_host}: "
                                      f"{one_line(e.message)}") from None
            raise

    async def _describe(self, workflow_id: str) -> WorkflowExecutionDescription:
        with self._rpc(workflow_id):
            return await self._handle(workflow_id).describe()

    async def _started_request(self, workflow_id: str, run_id: str) -> SongRequest:
        """The request a run was started with: its first history event's input, decoded as SongJob."""
        with self._rpc(workflow_id):
            page = await self.client.workflow_service.get_workflow_execution_history(
                GetWorkflowExecutionHistoryRequest(
                    namespace=self.client.namespace, maximum_page_size=1,
                    execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id)))
        started = page.history.events[0].workflow_execution_started_event_attributes
        [job] = await self.client.data_converter.decode(started.input.payloads, [SongJob])
        return job.request

    async def _attach(self, req: SongRequest, link: str) -> SongHandle | None:
        """The existing song of req.request_id when it was made from the same request; None when there is none."""
        try:
            desc = await self._describe(req.request_id)
        except SongNotFound:
            return None
        if desc.workflow_type != "SongWorkflow":
            raise InvalidRequest("request_id", f"{req.request_id} already names a {desc.workflow_type} workflow, "
                                               f"not a song; use another request_id")
        differs = _request_differences(req, await self._started_request(req.request_id, desc.run_id))
        if differs:
            raise RequestConflict(req.request_id, differs)
        return SongHandle(req.request_id, desc.run_id, link, True, _status_name(desc.raw_description.workflow_execution_info.status))

    async def submit(self, request: SongRequest, key_id: str | None = None) -> SongHandle:
        """Validate (nothing starts on bad input), then start. An existing request_id is attached to when it
        was submitted with the same request (`attached`, and that song's real `status`); with a different
        request it is a RequestConflict naming the fields that differ. `key_id`: the API key submitting it
        (its secret signs the webhook)."""
        req = validate(request)
        if req.callback_url is not None:
            from longsong.webhooks import check_url

            await asyncio.to_thread(check_url, req.callback_url, self.settings.webhook_allow_private)
        link = self.ui_link(req.request_id)
        summary = f"{req.prompt[:60]} · {req.duration_s:g} s · {req.engine}"
        try:
            with self._rpc(req.request_id):
                handle = await self.client.start_workflow(
                    SongWorkflow.run,
                    SongJob(req, self.settings.gpu_queue, self.settings.cpu_queue, Timing.of(self.settings), key_id),
                    id=req.request_id,
                    task_queue=self.settings.cpu_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
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
        except WorkflowAlreadyStartedError:  # a retry, or a race with another submit of the same request_id:
            existing = await self._attach(req, link)  # start first, so a fresh song costs one RPC, not two
            if existing is None:
                raise
            return existing
        return SongHandle(handle.id, handle.result_run_id, link, False, "running")

    async def extend(self, parent_id: str, duration_s: float, *, user_id: str = "anonymous", **options) -> SongHandle:
        """A new song (new id, `parent` in its manifest) that reuses the parent's windows as they are and adds
        `duration_s` seconds from its end, or from the last window end at or before `from_s`. Options:
        from_s, sections (times from the continuation point), outro, seed, request_id, max_rerolls."""
        return await self.submit(await self.derive("extend", parent_id, user_id, duration_s=duration_s, **options))

    async def regenerate(self, parent_id: str, from_window: int, *, user_id: str = "anonymous",
                         **options) -> SongHandle:
        """A new song keeping the parent's windows 0..from_window-1 and generating the rest anew. Options:
        seed (default: a new one), sections (default: the parent's), request_id, max_rerolls."""
        return await self.submit(await self.derive("regenerate", parent_id, user_id, from_window=from_window,
                                                    **options))

    async def derive(self, operation: str, parent_id: str, user_id: str, **options) -> SongRequest:
        """Check the parent (exists, finished, this user's, kept its windows), then build the derived request;
        every problem is a one-line ParentError/InvalidRequest and nothing is started."""
        from longsong.lineage import ParentError, derive, read_manifest

        check_user_id(user_id)
        if not isinstance(parent_id, str) or not ID_PATTERN.fullmatch(parent_id):
            raise ParentError("parent_id", f"must match [A-Za-z0-9_-]{{1,64}}, got {parent_id!r}")
        try:
            status = await self.status(parent_id)
        except SongNotFound:
            raise ParentError("parent_id", f"no song {parent_id} in namespace {self.client.namespace}") from None
        if status != "completed":
            raise ParentError("parent_id", f"song {parent_id} is {status}, not finished: only a completed song "
                                           f"can be extended or redone")
        owner = (await self.result(parent_id)).user_id
        if owner != user_id:
            raise ParentError("parent_id", f"song {parent_id} belongs to another user than {user_id}")
        storage = await self.storage()
        manifest = await asyncio.to_thread(read_manifest, storage, user_id, parent_id)
        return derive(operation, manifest, user_id=user_id, **options)

    async def progress(self, workflow_id: str) -> Progress:
        """The workflow's progress aged to this clock, with the running activity's attempt, last failure and
        heartbeat age merged in (`retrying`/`stalled`: no ETA)."""
        handle = self._handle(workflow_id)
        with self._rpc(workflow_id):
            p, desc = await asyncio.gather(handle.query(SongWorkflow.progress), handle.describe())
        if p.stage in CLOSED_STAGES:
            return p
        now = datetime.now(timezone.utc)
        aged = max(0.0, (now - datetime.fromisoformat(p.updated_at)).total_seconds())
        p.elapsed_s += aged
        if p.eta_s is not None:
            p.eta_s = max(0.0, p.eta_s - aged)
        pending = list(desc.raw_description.pending_activities)
        if pending:
            merge_pending(p, max(pending, key=lambda a: a.attempt), now)
        return p

    async def status(self, workflow_id: str) -> str:
        desc = await self._describe(workflow_id)
        return _status_name(desc.raw_description.workflow_execution_info.status)

    async def result(self, workflow_id: str) -> SongResult:
        try:
            with self._rpc(workflow_id):
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
        """Ask a running song to stop; SongClosed when it already completed, failed or was cancelled."""
        status = await self.status(workflow_id)
        if status == "running":
            try:
                with self._rpc(workflow_id):
                    await self._handle(workflow_id).cancel()
                return
            except SongNotFound:  # closed between the two calls
                status = await self.status(workflow_id)
        raise SongClosed(f"song {workflow_id} already {status}: nothing to cancel")

    async def list(self, user_id: str | None = None, limit: int = 20) -> list[SongSummary]:
        """Recent songs, of one user when `user_id` is given (checked against the id rule: it goes into the
        visibility query, quoted)."""
        query = "WorkflowType = 'SongWorkflow'"
        if user_id is not None:
            query += f" AND {USER.name} = '{check_user_id(user_id)}'"
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

    async def storage(self):
        """The object store of this client's settings (LONGSONG_STORAGE), opened once."""
        if self._storage is None:
            from longsong.storage import open_storage

            self._storage = await asyncio.to_thread(open_storage, settings=self.settings)
        return self._storage

    async def _finished(self, workflow_id: str) -> SongResult:
        status = await self.status(workflow_id)
        if status == "running":
            raise SongNotFinished(f"song {workflow_id} is still running: its files exist once it completes")
        return await self.result(workflow_id)

    async def links(self, workflow_id: str, expiry: timedelta | None = None) -> dict[str, str]:
        """Download links of a completed song's files (name -> link), minted now: presigned for `expiry`
        (default LONGSONG_LINK_EXPIRY, at most 7 days) on S3, file:// on local disk."""
        expiry = self.settings.link_expiry if expiry is None else check_expiry(expiry)
        res = await self._finished(workflow_id)
        storage = await self.storage()
        return await asyncio.to_thread(lambda: {name: storage.link(key, expiry) for name, key in res.files.items()})

    async def download(self, workflow_id: str, directory: str | Path) -> dict[str, Path]:
        """Wait for the song, then copy its track files, metadata and waveform from the store (by key) into
        `directory`."""
        from longsong.storage import StorageError

        res = await self.result(workflow_id)
        storage = await self.storage()
        folder = Path(directory)

        def fetch() -> dict[str, Path]:
            folder.mkdir(parents=True, exist_ok=True)
            paths: dict[str, Path] = {}
            for name, key in res.files.items():
                dest = folder / key.rsplit("/", 1)[-1]
                with replacing(dest) as tmp:
                    try:
                        storage.get_file(key, tmp)
                    except FileNotFoundError:
                        raise StorageError(f"song {workflow_id}: {key} is not in {storage.url} (LONGSONG_STORAGE "
                                           f"must name the store the workers write to)") from None
                paths[name] = dest
            return paths

        return await asyncio.to_thread(fetch)
