"""The ASGI app behind `longsong serve`: the /v1 API, the listening page at `/`, health probes and metrics.

`create_app` takes ready parts (tests and benchmarks pass their own client and database) or opens them
from the settings at start-up (migrations included). Every error is JSON `{"error": "<one line>", ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from longsong import __version__
from longsong.client import LongsongClient
from longsong.pending import one_line
from longsong.request import InvalidRequest
from longsong.service import quotas, routes
from longsong.service.auth import ApiError, Gate
from longsong.service.events import Broadcaster
from longsong.service.intake import BodyError
from longsong.service.metrics import HttpMetrics, metrics_response, reject
from longsong.service.schemas import ExtendIn, RegenerateIn, SongIn
from longsong.service.views import Views
from longsong.settings import Settings

STATIC = Path(__file__).parent / "static"
READY_TIMEOUT_S = 3.0


@dataclass
class Service:
    """What the routes share: settings, the Temporal client, the database, views, SSE fan-out, limits."""

    settings: Settings
    client: LongsongClient
    db: object
    registry: object

    def __post_init__(self) -> None:
        self.gate = Gate(self.db, quotas.defaults(self.settings))
        self.views = Views(self.client)
        self.events = Broadcaster(self.views.song)

    def reject(self, reason: str) -> None:
        reject(reason, self.registry)


def error_body(status: int, message: str, **extra) -> JSONResponse:
    body = {"error": one_line(message), **{k: v for k, v in extra.items() if k != "headers"}}
    return JSONResponse(body, status_code=status, headers=extra.get("headers"))


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        if e.status == 429:
            request.app.state.service.reject(e.extra.get("limit", "rate"))
        return error_body(e.status, str(e), field=e.field, headers=e.headers, **e.extra)

    @app.exception_handler(BodyError)
    async def body_error(request: Request, e: BodyError) -> JSONResponse:
        err = routes.body_error(e)
        return error_body(err.status, str(err), field=err.field, **err.extra)

    @app.exception_handler(InvalidRequest)
    async def invalid(request: Request, e: InvalidRequest) -> JSONResponse:
        return error_body(422, str(e), field=e.field, errors=[{"field": e.field, "message": str(e)}])

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in err["loc"][1:]) or None,
                   "message": f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}"} for err in e.errors()]
        return error_body(422, "; ".join(x["message"] for x in errors), errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else str(e.status_code)
        return error_body(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(ConnectionError)
    async def unreachable(request: Request, e: ConnectionError) -> JSONResponse:
        return error_body(503, str(e), headers={"Retry-After": "5"})


def _openapi(app: FastAPI) -> dict:
    """The generated schema, plus the request bodies (read by intake, not by pydantic) as components."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (SongIn, ExtendIn, RegenerateIn):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        for path in schema["paths"].values():  # OpenAPI 3.2's itemSchema is not 3.1 (what FastAPI declares)
            for op in path.values():
                stream = op.get("responses", {}).get("200", {}).get("content", {}).get("text/event-stream")
                if stream is not None and "itemSchema" in stream:
                    stream["schema"] = {"type": "string", "description": "`event: progress|end|error` lines, "
                                        "each `data:` a Song object (JSON)"}
                    del stream["itemSchema"]
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None, client: LongsongClient | None = None, db=None) -> FastAPI:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from longsong import telemetry
        from longsong.service.db import Database

        own_db = db is None
        database = await asyncio.to_thread(Database.open, settings.database) if own_db else db
        lc = client or await LongsongClient.connect(settings=settings, interceptors=telemetry.interceptors())
        app.state.service = Service(settings, lc, database, registry)
        try:
            yield
        finally:
            await app.state.service.events.close()
            if own_db:
                database.close()

    registry = CollectorRegistry()  # this app's own: apps made again in one process do not share counts
    app = FastAPI(title="longsong", version=__version__, lifespan=lifespan,
                  description="Full-length AI songs. Authenticate with `Authorization: Bearer <key>`.")
    app.openapi = lambda: _openapi(app)
    _handlers(app)
    app.include_router(routes.router)
    app.include_router(routes.me_router)
    app.add_middleware(HttpMetrics, registry=registry)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Temporal, the store and the database are reachable")
    async def readyz(request: Request) -> JSONResponse:
        svc: Service = request.app.state.service

        async def check(name: str, probe) -> tuple[str, str]:
            try:
                await asyncio.wait_for(probe(), READY_TIMEOUT_S)
                return name, "ok"
            except Exception as e:  # noqa: BLE001 - reported, not raised: this is the probe
                return name, one_line(str(e)) or type(e).__name__

        async def storage() -> None:
            store = await svc.client.storage()
            await asyncio.to_thread(store.exists, "readyz")

        parts = dict(await asyncio.gather(
            check("temporal", svc.client.client.service_client.check_health),
            check("storage", storage),
            check("database", lambda: asyncio.to_thread(svc.db.ping))))
        return JSONResponse(parts, status_code=200 if all(v == "ok" for v in parts.values()) else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return metrics_response(registry)

    return app


def serve(settings: Settings) -> None:
    """`longsong serve`: the app on LONGSONG_API_HOST:LONGSONG_API_PORT until SIGTERM/SIGINT."""
    import uvicorn

    from longsong import telemetry

    telemetry.setup_logging(settings, "api")
    try:
        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None,
                    proxy_headers=True, access_log=False)
    finally:
        telemetry.shutdown()  # spans still buffered
