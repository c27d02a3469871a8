"""A song as the API shows it: status, progress, result and file paths, read from Temporal and the store.

A closed song never changes, so its view is computed once and kept (bounded); a running one costs a
describe and a progress query. File entries are API paths, never store links: a presigned link is minted
only when a file is asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict

from longsong.client import LongsongClient, SongFailed, _status_name
from longsong.storage import COMMIT_MARKER

PREFIX = "/v1/songs"
CACHED = 2000  # closed songs' views kept in memory


def file_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def links(song_id: str) -> dict[str, str]:
    return {"self": f"{PREFIX}/{song_id}", "events": f"{PREFIX}/{song_id}/events",
            "files": f"{PREFIX}/{song_id}/files"}


class Views:
    def __init__(self, client: LongsongClient):
        self.client = client
        self._closed: OrderedDict[str, dict] = OrderedDict()

    async def song(self, song_id: str) -> dict:
        """The Song object (schemas.SongOut); SongNotFound propagates."""
        cached = self._closed.get(song_id)
        if cached is not None:
            self._closed.move_to_end(song_id)
            return cached
        desc = await self.client.client.get_workflow_handle(song_id).describe()
        status = _status_name(desc.raw_description.workflow_execution_info.status)
        memo = await desc.memo()
        view = {
            "id": song_id, "status": status, "prompt": str(memo.get("prompt", "")),
            "duration_s": float(memo.get("duration_s", 0.0)), "engine": self._engine(desc),
            "created_at": desc.start_time, "result": None, "error": None, "files": {}, "links": links(song_id),
        }
        if status == "running":
            view["progress"] = self._progress(await self.client.progress(song_id))
            return view
        await self._closed_view(song_id, status, view)
        self._closed[song_id] = view
        while len(self._closed) > CACHED:
            self._closed.popitem(last=False)
        return view

    @staticmethod
    def _engine(desc) -> str:
        from longsong.workflows.messages import ENGINE

        return desc.typed_search_attributes.get(ENGINE) or ""

    @staticmethod
    def _progress(p) -> dict:
        return {"stage": p.stage, "windows_done": p.segments_done, "windows_total": p.segments_total,
                "percent": p.percent, "elapsed_s": round(p.elapsed_s, 2),
                "eta_s": None if p.eta_s is None else round(p.eta_s, 1), "retrying": p.retrying,
                "stalled": p.stalled, "attempt": p.attempt, "last_failure": p.last_failure, "rerolls": p.rerolls}

    async def _closed_view(self, song_id: str, status: str, view: dict) -> None:
        stage = {"completed": "done", "canceled": "cancelled"}.get(status, "failed")
        progress = {"stage": stage, "windows_done": 0, "windows_total": 0, "percent": 100 if stage == "done" else 0,
                    "elapsed_s": 0.0, "eta_s": None, "retrying": False, "stalled": False, "attempt": None,
                    "last_failure": None, "rerolls": 0}
        view["progress"] = progress
        try:
            res = await self.client.result(song_id)
        except SongFailed as e:
            view["error"] = str(e)
            return
        n = len(res.windows) or int(res.timings.get("windows", 0))
        progress.update(windows_done=n, windows_total=n, elapsed_s=round(res.timings.get("total_s", 0.0), 2),
                        rerolls=sum(w.rerolls for w in res.windows if not w.inherited))
        view["files"] = {name: f"{PREFIX}/{song_id}/files/{file_name(key)}" for name, key in res.files.items()}
        manifest = await self._manifest(res.files.get("metadata"))
        view["result"] = {
            "duration_s": res.duration_s, "loudness_lufs": res.loudness_lufs, "true_peak_dbtp": res.true_peak_dbtp,
            "quality": res.quality, "watermark_id": res.watermark_id, "seed": res.seed, "engine": res.engine,
            "model": res.model, "parent_id": res.parent_id,
            "sections": manifest.get("request", {}).get("sections", []),
            "seams": [round(s["start_s"] + s.get("length_s", 0.0) / 2, 3) for s in manifest.get("seams", [])],
        }
        if not progress["windows_total"]:
            progress["windows_done"] = progress["windows_total"] = len(manifest.get("plan", {}).get("segments", []))

    async def _manifest(self, key: str | None) -> dict:
        if key is None or not key.endswith(COMMIT_MARKER):
            return {}
        storage = await self.client.storage()
        try:
            return json.loads(await asyncio.to_thread(storage.get_bytes, key))
        except FileNotFoundError:
            return {}

    async def key_of(self, song_id: str, name: str) -> str | None:
        """The object key of the song's file called `name` (e.g. 'track.mp3'); None when it has none such."""
        res = await self.client.result(song_id)
        return next((key for key in res.files.values() if file_name(key) == name), None)


def is_closed(view: dict) -> bool:
    """The workflow itself has closed: a closed stage alone is not enough (scratch cleanup still runs after
    "done"), and only a closed song's view carries its result, files and terminal status."""
    return view["status"] != "running"

