"""The API's Prometheus metrics: request latency by route template and status, and requests refused by quota
or rate limit. Kept in the API's own registry (not prometheus_client's global one), exposed by the app's
`/metrics` route; the workers' metrics are on their own endpoints (longsong.telemetry)."""

from __future__ import annotations

import functools
import time
from typing import Any, Awaitable, Callable, MutableMapping

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

Scope = MutableMapping[str, Any]  # the ASGI types, as Starlette spells them
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REGISTRY = CollectorRegistry()
UNMATCHED = "other"  # the route label of requests no route matched: raw paths would explode the label set


@functools.cache
def _families(registry: CollectorRegistry) -> tuple[Histogram, Counter]:
    """The API's metric families, registered once per registry (apps made again in one process share them)."""
    return (Histogram("longsong_http_request_seconds", "HTTP request latency by route template and status",
                      ["method", "route", "status"], registry=registry),
            Counter("longsong_api_rejections", "requests refused by a quota or the rate limit, by reason",
                    ["reason"], registry=registry))


def reject(reason: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Count one refused request; `reason` is one fixed word (e.g. rate, concurrent, daily, monthly)."""
    _families(registry)[1].labels(reason=reason).inc()


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/v1/songs/{song_id}`), set by the router on the scope."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED


class HttpMetrics:
    """ASGI middleware timing each HTTP request from its start to its last byte; an exception is a 500."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry = REGISTRY):
        self.app = app
        self.seconds = _families(registry)[0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.seconds.labels(scope["method"], route_template(scope), str(status)).observe(
                time.perf_counter() - started)


def metrics_response(registry: CollectorRegistry = REGISTRY) -> Response:
    """The registry in Prometheus' text exposition format."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
