"""Who is calling: the API key (`Authorization: Bearer …`, or `?key=` where a browser cannot send headers)
becomes one user, checked against the per-user rate limit; errors are one-line JSON with their HTTP status."""

from __future__ import annotations

import asyncio
import math
import time

from fastapi import Request

from longsong.service import keys, quotas
from longsong.service.keys import Principal
from longsong.service.quotas import Quota
from longsong.service.ratelimit import RateLimiter

QUOTA_CACHE_S = 5.0  # a changed quota applies within this long; saves a database read per request


class ApiError(Exception):
    """An HTTP answer other than success: status, a one-line message, and optional JSON extras and headers."""

    def __init__(self, status: int, message: str, *, field: str | None = None, headers: dict | None = None,
                 **extra):
        super().__init__(message)
        self.status = status
        self.field = field
        self.headers = headers or {}
        self.extra = extra


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    if request.method in ("GET", "HEAD"):  # EventSource and <audio> cannot send an Authorization header
        return request.query_params.get("key")
    return None


class Gate:
    """Authentication, per-user quotas (cached briefly) and the token bucket, shared by every route."""

    def __init__(self, db, defaults: Quota):
        self.db = db
        self.defaults = defaults
        self.limiter = RateLimiter()
        self._quotas: dict[str, tuple[float, Quota]] = {}

    async def quota(self, user_id: str) -> Quota:
        hit = self._quotas.get(user_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < QUOTA_CACHE_S:
            return hit[1]
        quota = await asyncio.to_thread(quotas.quota_for, self.db, user_id, self.defaults)
        if len(self._quotas) > 10000:
            self._quotas.clear()
        self._quotas[user_id] = (now, quota)
        return quota

    async def principal(self, request: Request) -> Principal:
        token = bearer(request)
        if not token:
            raise ApiError(401, "missing API key: send Authorization: Bearer <key> (create one with "
                                "`longsong keys create --user U`)", headers={"WWW-Authenticate": "Bearer"})
        who = await asyncio.to_thread(keys.authenticate, self.db, token)
        if who is None:
            raise ApiError(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        quota = await self.quota(who.user_id)
        wait = self.limiter.take(who.user_id, quota.rate_per_s, quota.burst)
        if wait > 0:
            raise ApiError(429, f"rate limit: {quota.rate_per_s:g} requests/s (burst {quota.burst}) for user "
                                f"{who.user_id}; retry in {wait:.2f} s", limit="rate",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        request.state.principal = who
        return who

