"""Record histories of finished songs for the replay test: `python tests/histories/record.py TAG`.

Each recording is kept (`{song}.{TAG}.json`, TAG e.g. the date): record before a workflow change, so the
replay test proves that histories of songs started on the old code still replay (the change goes behind
`workflow.patched`). Never delete an old recording to make the replay test pass.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from longsong.client import LongsongClient
from longsong.devstack import dev_server
from longsong.engines.faults import FaultyEngine
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import Section, SongRequest
from longsong.settings import Settings
from longsong.storage import FileStorage
from longsong.worker import in_process

HERE = Path(__file__).resolve().parent

SONGS = {
    "song-45s-sections": SongRequest(prompt="replay check", duration_s=45, seed=3, formats=["mp3"],
                                     sections=[Section(0, "intro"), Section(20, "chorus")],
                                     request_id="replay-45s-sections"),
    "song-60s-drawn-seed": SongRequest(prompt="replay check, no seed", duration_s=60, formats=["wav"],
                                       request_id="replay-60s-drawn-seed"),
}


class Receiver(BaseHTTPRequestHandler):
    """The callback of the recorded webhook song: takes the event, answers 204."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


async def record(address: str, storage: FileStorage, tag: str) -> None:
    settings = Settings(gpu_queue="replay-gpu", cpu_queue="replay-cpu", storage=storage.url,
                        webhook_allow_private=True)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    songs = {**SONGS, "song-30s-callback": SongRequest(
        prompt="replay check, callback", duration_s=30, seed=5, formats=["mp3"], request_id="replay-30s-callback",
        callback_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook")}
    # window 1's first try is spoiled, so every recording holds a quality-gate re-roll
    registry = EngineRegistry([FaultyEngine(ProceduralEngine(), {(1, 0): "silence"})])
    async with in_process(address, settings, storage, registry) as client:
        lc = LongsongClient(client, settings)

        async def keep(name: str, handle) -> None:
            await lc.result(handle.workflow_id)
            history = await client.get_workflow_handle(handle.workflow_id).fetch_history()
            (HERE / f"{name}.{tag}.json").write_text(history.to_json())
            print("recorded", name)

        for name, req in songs.items():
            await keep(name, await lc.submit(replace(req, request_id=f"{req.request_id}-{tag}")))
        parent = f"{SONGS['song-45s-sections'].request_id}-{tag}"
        await keep("song-extended", await lc.extend(parent, 30, request_id=f"replay-extended-{tag}"))
    receiver.shutdown()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/histories/record.py TAG   (e.g. the date: 2026-12-01)")
    with tempfile.TemporaryDirectory() as tmp, dev_server(Path(tmp) / "t.db") as address:
        asyncio.run(record(address, FileStorage(Path(tmp) / "objects"), sys.argv[1]))


if __name__ == "__main__":
    main()
