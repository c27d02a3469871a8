"""The /v1 routes. Every song route first checks that the song is the caller's (else 404, as if it did not
exist); submits pass the body check, then the quota admission, then start the workflow."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Annotated, AsyncIterable

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from longsong.client import RequestConflict, SongClosed, SongNotFound
from longsong.request import ID_PATTERN, InvalidRequest, SongRequest
from longsong.service import intake, quotas
from longsong.service.auth import ApiError
from longsong.service.intake import BodyError
from longsong.service.keys import Principal
from longsong.service.schemas import CancelOut, ErrorOut, ExtendIn, MeOut, RegenerateIn, SongIn, SongListOut, SongOut
from longsong.service.views import PREFIX, links
from longsong.webhooks import check_url

MEDIA = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "opus": "audio/ogg", "png": "image/png",
         "json": "application/json"}
ERRORS = {s: {"model": ErrorOut} for s in (400, 401, 404, 409, 413, 422, 429, 503)}
LOST_SUBMIT_S = 120  # a reservation whose workflow never appeared after this long was a submit that died


def body_schema(model: type) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def service(request: Request):
    return request.app.state.service


async def caller(request: Request) -> Principal:
    return await service(request).gate.principal(request)


router = APIRouter(prefix=PREFIX, responses=ERRORS, dependencies=[Depends(caller)])


async def read_body(request: Request) -> bytes:
    """At most 64 KB read, whatever Content-Length says (a chunked body is cut off at the limit)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > intake.MAX_BODY:
        raise ApiError(413, f"body is {declared} bytes; at most {intake.MAX_BODY} (64 KB)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > intake.MAX_BODY:
            raise ApiError(413, f"body is over {intake.MAX_BODY} bytes (64 KB)")
        chunks.append(chunk)
    return b"".join(chunks)


async def owned(request: Request, song_id: str) -> str:
    """The song exists and is the caller's; anything else is the same 404 (ids of others are not revealed).
    A dependency, so it runs before a streamed response has started."""
    svc, who = service(request), request.state.principal
    missing = ApiError(404, f"no song {song_id}")
    if not ID_PATTERN.fullmatch(song_id):
        raise missing
    owner = await asyncio.to_thread(quotas.owner, svc.db, song_id)
    if owner is None:  # made with the CLI or the Python client: its workflow's user search attribute says
        from longsong.workflows.messages import USER

        try:
            desc = await svc.client.client.get_workflow_handle(song_id).describe()
        except Exception:  # noqa: BLE001 - no such workflow (or not a song): the same 404
            raise missing from None
        owner = desc.typed_search_attributes.get(USER) if desc.workflow_type == "SongWorkflow" else None
    if owner != who.user_id:
        raise missing
    return song_id


Owned = Annotated[str, Depends(owned)]


async def admit(svc, who: Principal, req: SongRequest) -> quotas.Admission:
    quota = await svc.gate.quota(who.user_id)
    retried = False
    while True:
        try:
            return await asyncio.to_thread(quotas.admit, svc.db, who.user_id, req.request_id, req.duration_s, quota,
                                           key_id=who.key_id, prompt=req.prompt)
        except quotas.SongTaken:
            raise ApiError(409, f"request_id {req.request_id} is taken; use another", field="request_id") from None
        except quotas.OverQuota as e:
            if not retried and e.limit == "concurrent" and await reconcile(svc, who.user_id):
                retried = True  # some reserved songs had ended: try once more
                continue
            raise ApiError(429, e.reason, limit=e.limit, headers={"Retry-After": str(e.retry_after_s)}) from None


async def reconcile(svc, user_id: str) -> bool:
    """Settle the user's reservations whose songs have ended; True when any had."""
    settled = False
    for song_id in await asyncio.to_thread(quotas.active_songs, svc.db, user_id):
        try:
            status = await svc.client.status(song_id)
        except SongNotFound:
            row = await asyncio.to_thread(quotas.song, svc.db, song_id)
            if row is None or (datetime.now(timezone.utc) - row.created_at).total_seconds() < LOST_SUBMIT_S:
                continue  # being submitted right now
            status = "failed"
        if status != "running":
            await asyncio.to_thread(quotas.settle, svc.db, song_id, status)
            settled = True
    return settled


async def submit(request: Request, req: SongRequest) -> JSONResponse:
    svc, who = service(request), request.state.principal
    if req.callback_url is not None:  # before anything is reserved: a refused URL writes nothing
        await asyncio.to_thread(check_url, req.callback_url, svc.settings.webhook_allow_private)
    admission = await admit(svc, who, req)
    try:
        handle = await svc.client.submit(req, key_id=who.key_id)
    except RequestConflict as e:
        if admission.new:
            await asyncio.to_thread(quotas.release, svc.db, req.request_id)
        if "user_id" in e.differs:
            raise ApiError(409, f"request_id {req.request_id} is taken; use another", field="request_id") from None
        raise ApiError(409, str(e), field="request_id", fields=e.differs) from None
    except BaseException:
        if admission.new:
            await asyncio.to_thread(quotas.release, svc.db, req.request_id)
        raise
    view = {"id": handle.workflow_id, "status": handle.status, "prompt": req.prompt, "duration_s": req.duration_s,
            "engine": req.engine, "created_at": datetime.now(timezone.utc), "result": None, "error": None,
            "files": {}, "links": links(handle.workflow_id),
            "progress": {"stage": "queued", "windows_done": 0, "windows_total": 0, "percent": 0, "elapsed_s": 0.0,
                         "eta_s": None}}
    if handle.attached:
        view = await svc.views.song(handle.workflow_id)
    headers = {"Location": f"{PREFIX}/{handle.workflow_id}"}
    body = SongOut.model_validate(view).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if handle.attached else 201, headers=headers)


@router.post("", status_code=201, response_model=SongOut, openapi_extra=body_schema(SongIn),
             summary="Submit a song")
async def create_song(request: Request) -> JSONResponse:
    body = await read_body(request)
    req = intake.song_request(body, request.state.principal.user_id, request.headers.get("idempotency-key"))
    return await submit(request, req)


async def _derived(request: Request, song_id: str, operation: str) -> JSONResponse:
    svc, who = service(request), request.state.principal
    options = intake.derive_options(await read_body(request), operation)
    key = request.headers.get("idempotency-key")
    if key is not None and "request_id" not in options:
        options["request_id"] = intake.idempotent_id(who.user_id, f"{operation}:{song_id}:{key}")
    try:
        req = await svc.client.derive(operation, song_id, who.user_id, **options)
    except TypeError as e:  # a value of the wrong type that derive's arithmetic met first
        raise ApiError(422, f"{operation}: {' '.join(str(e).split())}") from None
    return await submit(request, req)


@router.post("/{song_id}/extend", status_code=201, response_model=SongOut,
             openapi_extra=body_schema(ExtendIn), summary="A new song continuing a finished one")
async def extend_song(request: Request, song_id: Owned) -> JSONResponse:
    return await _derived(request, song_id, "extend")


@router.post("/{song_id}/regenerate", status_code=201, response_model=SongOut,
             openapi_extra=body_schema(RegenerateIn), summary="Redo a finished song from a window on")
async def regenerate_song(request: Request, song_id: Owned) -> JSONResponse:
    return await _derived(request, song_id, "regenerate")


async def song_view(request: Request, song_id: str) -> dict:
    svc = service(request)
    try:
        view = await svc.views.song(song_id)
    except SongNotFound:
        raise ApiError(404, f"no song {song_id}") from None
    if view["status"] != "running":
        await asyncio.to_thread(quotas.settle, svc.db, song_id, view["status"])
    return view


@router.get("/{song_id}", response_model=SongOut, summary="Status, progress, result and file links")
async def get_song(request: Request, song_id: Owned) -> dict:
    return await song_view(request, song_id)


@router.get("/{song_id}/events", response_class=EventSourceResponse,
            summary="Server-Sent Events: `progress` (a Song) while it changes, then `end`")
async def song_events(request: Request, song_id: Owned) -> AsyncIterable[ServerSentEvent]:
    svc = service(request)
    async for event, view in svc.events.listen(song_id):
        data = SongOut.model_validate(view).model_dump(mode="json") if event != "error" else view
        yield ServerSentEvent(raw_data=json.dumps(data), event=event)
        if event == "end":
            await asyncio.to_thread(quotas.settle, svc.db, song_id, view["status"])


@router.get("/{song_id}/files/{name}", summary="A file of a completed song (Range supported), or a redirect to "
            "a fresh presigned link", responses={200: {"content": {m: {} for m in MEDIA.values()}}, 206: {},
                                                 307: {}, 416: {"model": ErrorOut}})
async def get_file(request: Request, song_id: Owned, name: str):
    svc = service(request)
    view = await song_view(request, song_id)
    if view["status"] != "completed":
        raise ApiError(409 if view["status"] == "running" else 404,
                       f"song {song_id} is {view['status']}: it has no files")
    key = await svc.views.key_of(song_id, name)
    if key is None:
        raise ApiError(404, f"song {song_id} has no file {name!r}; it has: "
                            + ", ".join(v.rsplit("/", 1)[-1] for v in view["files"].values()))
    storage = await svc.client.storage()
    path = storage.local_path(key)
    if path is None:
        link = await asyncio.to_thread(storage.link, key, svc.settings.link_expiry)
        return RedirectResponse(link, status_code=307, headers={"Cache-Control": "no-store"})
    media = MEDIA.get(name.rsplit(".", 1)[-1], "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/{song_id}", status_code=202, response_model=CancelOut, summary="Cancel a running song")
async def cancel_song(request: Request, song_id: Owned) -> dict:
    try:
        await service(request).client.cancel(song_id)
    except SongClosed as e:
        raise ApiError(409, str(e)) from None
    return {"id": song_id, "status": "cancelling"}


@router.get("", response_model=SongListOut, summary="The caller's songs, newest first")
async def list_songs(request: Request, limit: int = Query(20, ge=1, le=100),
                     cursor: str | None = Query(None, max_length=200)) -> dict:
    svc, who = service(request), request.state.principal
    try:
        rows, after = await asyncio.to_thread(quotas.songs, svc.db, who.user_id, limit, cursor)
    except InvalidRequest as e:
        raise ApiError(422, str(e), field=e.field) from None
    if any(r.status == "active" for r in rows) and await reconcile(svc, who.user_id):
        rows, after = await asyncio.to_thread(quotas.songs, svc.db, who.user_id, limit, cursor)
    songs = [{"id": r.song_id, "status": "running" if r.status == "active" else r.status, "prompt": r.prompt,
              "duration_s": r.duration_s, "created_at": r.created_at} for r in rows]
    return {"songs": songs, "next_cursor": after}


me_router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(caller)])


@me_router.get("/me", response_model=MeOut, summary="The key's user, quota and usage")
async def me(request: Request) -> dict:
    svc, who = service(request), request.state.principal
    quota = await svc.gate.quota(who.user_id)
    usage = await asyncio.to_thread(quotas.usage, svc.db, who.user_id)
    return {"user_id": who.user_id, "key_id": who.key_id, "key_name": who.name, "quota": asdict(quota),
            "usage": usage}


def body_error(e: BodyError) -> ApiError:
    errors = [{"field": f, "message": m} for f, m in e.errors]
    return ApiError(e.status, str(e), field=e.errors[0][0] if len(e.errors) == 1 else None, errors=errors)

