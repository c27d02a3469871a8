"""Server-Sent Events fan-out: one poller per song, however many listeners.

Each song being watched has a single task that reads its view about once a second and hands every change
to the listeners' queues, so 100 browsers on one song cost the Temporal server one describe and one query
per second, not a hundred. The poller stops when the song ends (after sending `end`) or when its last
listener leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

from longsong.service.views import is_closed

QUEUE = 16  # events a slow listener may lag behind; older changes are dropped for it (the latest is what counts)


@dataclass
class _Watch:
    listeners: set[asyncio.Queue] = field(default_factory=set)
    task: asyncio.Task | None = None
    latest: tuple[str, dict] | None = None  # a listener that joins late starts from it


class Broadcaster:
    def __init__(self, view: Callable[[str], Awaitable[dict]], interval_s: float = 1.0):
        self._view = view
        self._interval = interval_s
        self._watches: dict[str, _Watch] = {}

    async def _poll(self, song_id: str, watch: _Watch) -> None:
        last = None
        try:
            while True:
                try:
                    view = await self._view(song_id)
                except Exception as e:  # noqa: BLE001 - a worker restart or a blip: say so, keep watching
                    self._send(watch, ("error", {"error": " ".join(str(e).split()) or type(e).__name__}))
                    await asyncio.sleep(self._interval)
                    continue
                text = json.dumps(view, default=str, sort_keys=True)
                if is_closed(view):
                    self._send(watch, ("end", view))
                    return
                if text != last:
                    self._send(watch, ("progress", view))
                    last = text
                await asyncio.sleep(self._interval)
        finally:
            self._watches.pop(song_id, None)
            self._send(watch, None)  # listeners of a poller that stopped end their stream

    @staticmethod
    def _send(watch: _Watch, item) -> None:
        if item is not None:
            watch.latest = item
        for q in list(watch.listeners):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(item)

    async def listen(self, song_id: str) -> AsyncIterator[tuple[str, dict]]:
        """(event, Song view) pairs until the song ends; the last one is ("end", view)."""
        watch = self._watches.get(song_id)
        if watch is None:
            watch = self._watches[song_id] = _Watch()
        q: asyncio.Queue = asyncio.Queue(QUEUE)
        if watch.latest is not None:
            q.put_nowait(watch.latest)
        watch.listeners.add(q)
        if watch.task is None:
            watch.task = asyncio.create_task(self._poll(song_id, watch))
        try:
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item
                if item[0] == "end":
                    return
        finally:
            watch.listeners.discard(q)
            if not watch.listeners and watch.task is not None and not watch.task.done():
                watch.task.cancel()

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
