"""Record histories of finished songs for the replay test: `python tests/histories/record.py`.

Re-record only when a workflow change is meant to be incompatible (and version it with
`workflow.patched` instead where songs may be in flight).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

import conftest  # noqa: E402
from client import LongsongClient  # noqa: E402
from longsong.request import Section, SongRequest  # noqa: E402
from longsong.storage import FileStorage  # noqa: E402

SONGS = {
    "song-45s-sections": SongRequest(prompt="replay check", duration_s=45, seed=3, formats=["mp3"],
                                     sections=[Section(0, "intro"), Section(20, "chorus")],
                                     request_id="replay-45s-sections"),
    "song-60s-drawn-seed": SongRequest(prompt="replay check, no seed", duration_s=60, formats=["wav"],
                                       request_id="replay-60s-drawn-seed"),
}


async def record(address: str, storage: FileStorage) -> None:
    async with conftest.running_workers(address, storage, "replay-gpu", "replay-cpu") as client:
        lc = LongsongClient(client, "replay-gpu", "replay-cpu")
        for name, req in SONGS.items():
            handle = await lc.submit(req)
            await lc.result(handle.workflow_id)
            history = await client.get_workflow_handle(handle.workflow_id).fetch_history()
            (HERE / f"{name}.json").write_text(history.to_json())
            print("recorded", name)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, conftest.dev_server(Path(tmp) / "t.db") as address:
        asyncio.run(record(address, FileStorage(Path(tmp) / "objects")))


if __name__ == "__main__":
    main()
