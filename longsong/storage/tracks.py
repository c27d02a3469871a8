"""Committed track folders: atomic visibility on any Storage backend.

A track folder (`audio/{user_id}/{request_id}/`) is written file by file; its `metadata.json`
(storage.COMMIT_MARKER) is written last and marks the folder complete. Readers go through these helpers
and ignore a folder without the marker (a publish still running, or one that failed half-way).
Both backends are strongly consistent for a single writer: once the marker is visible, so is every
object written before it.
"""

from __future__ import annotations

from longsong.storage import COMMIT_MARKER, Storage

AUDIO_PREFIX = "audio/"


def _folder(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def is_complete(storage: Storage, folder: str) -> bool:
    """True when `folder` (e.g. 'audio/u1/r1/') holds its commit marker."""
    return storage.exists(_folder(folder) + COMMIT_MARKER)


def complete_tracks(storage: Storage, prefix: str = AUDIO_PREFIX) -> list[str]:
    """Committed track folders under `prefix`, sorted, each ending in '/' (e.g. 'audio/u1/r1/')."""
    out = set()
    for key in storage.list(prefix):
        if key == COMMIT_MARKER:
            out.add("")
        elif key.endswith("/" + COMMIT_MARKER):
            out.add(key[: -len(COMMIT_MARKER)])
    return sorted(out)


def incomplete_tracks(storage: Storage, prefix: str = AUDIO_PREFIX) -> list[str]:
    """Folders under `prefix` holding objects but no commit marker (publishing now, or abandoned)."""
    folders: set[str] = set()
    committed: set[str] = set()
    for key in storage.list(prefix):
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        folders.add(folder)
        if key == COMMIT_MARKER or key.endswith("/" + COMMIT_MARKER):
            committed.add(folder)
    # Never report a folder that contains committed tracks (deleting it would delete them), nor one inside a
    # committed track (its windows/ folder).
    return sorted(f for f in folders - committed
                  if not any(c.startswith(f) and c != f or f.startswith(c) for c in committed))


def track_keys(storage: Storage, folder: str) -> list[str]:
    """The objects of a committed track folder; [] when the folder is not complete."""
    folder = _folder(folder)
    keys = storage.list(folder)
    if folder + COMMIT_MARKER not in keys:
        return []
    return [k for k in keys if "/" not in k[len(folder):]]
