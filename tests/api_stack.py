"""The whole service for a test, started for real: a Temporal dev server, both workers (in-process), the
SQLite (or PostgreSQL) database and the API served by uvicorn on a loopback port, all on one event loop in
a background thread, so tests talk to it over HTTP like any client."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import httpx
import uvicorn

from longsong.client import LongsongClient
from longsong.devstack import free_port
from longsong.service import keys, quotas
from longsong.service.app import create_app
from longsong.service.db import Database
from longsong.settings import Settings
from longsong.storage import open_storage
from longsong.worker import in_process


@dataclass
class Stack:
    url: str
    settings: Settings
    db: Database
    loop: asyncio.AbstractEventLoop
    client: LongsongClient

    def key(self, user: str, **quota) -> str:
        """A new key for `user` (its quota overrides set first); returns the bearer token."""
        if quota:
            quotas.set_quota(self.db, user, default=quotas.defaults(self.settings), **quota)
        return keys.create_key(self.db, user, "test").token

    def http(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def call(self, coro, timeout: float = 300):
        """Run a coroutine on the stack's loop (the Temporal client lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def api_stack(address: str, tmp: Path, database: str | None = None, **overrides) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(home=tmp / "home", gpu_queue=f"api-gpu-{tag}", cpu_queue=f"api-cpu-{tag}",
                        storage=(tmp / "objects").as_uri(), shutdown_grace_s=5, retry_initial_s=0.2, retry_max_s=1,
                        webhook_allow_private=True)
    settings = replace(settings, **overrides)
    storage = open_storage(settings=settings)
    db = Database.open(database or f"sqlite:///{tmp / 'api.db'}")
    port = free_port()
    ready, stop = threading.Event(), None
    box: dict = {}

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with in_process(address, settings, storage) as client:
            lc = LongsongClient(client, settings)
            server = uvicorn.Server(uvicorn.Config(create_app(settings, lc, db), host="127.0.0.1", port=port,
                                                   log_level="warning", lifespan="on"))
            serving = asyncio.create_task(server.serve())
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.05)
            box["client"] = lc
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await stop.wait()
            server.should_exit = True
            await serving

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=run, name="api-stack", daemon=True)
    thread.start()
    ready.wait(120)
    if "error" in box:
        raise box["error"]
    try:
        yield Stack(f"http://127.0.0.1:{port}", settings, db, box["loop"], box["client"])
    finally:
        box["loop"].call_soon_threadsafe(stop.set)
        thread.join(60)
        db.close()
