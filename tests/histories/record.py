"""Record histories of finished songs for the replay test: `python tests/histories/record.py`.

Re-record only when a workflow change is meant to be incompatible (and version it with
`workflow.patched` instead where songs may be in flight).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from longsong.client import LongsongClient
from longsong.devstack import dev_server
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


async def record(address: str, storage: FileStorage) -> None:
    settings = Settings(gpu_queue="replay-gpu", cpu_queue="replay-cpu")
    async with in_process(address, settings, storage) as client:
        lc = LongsongClient(client, settings)
        for name, req in SONGS.items():
            handle = await lc.submit(req)
            await lc.result(handle.workflow_id)
            history = await client.get_workflow_handle(handle.workflow_id).fetch_history()
            (HERE / f"{name}.json").write_text(history.to_json())
            print("recorded", name)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, dev_server(Path(tmp) / "t.db") as address:
        asyncio.run(record(address, FileStorage(Path(tmp) / "objects")))


if __name__ == "__main__":
    main()
