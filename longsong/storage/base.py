"""The object-store interface every backend implements, its errors and key rules.

Keys are '/'-separated ("work/{request_id}/seg-000.npy", "audio/{user}/{request}/track.mp3").
Writes are atomic: an object is either absent or complete, never half written.
A track folder is complete once its `metadata.json` exists (written last: the commit marker).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

from longsong.atomic import temp_dir

COMMIT_MARKER = "metadata.json"

# ---------------------------------------------------------------------------------------------- waiting hook
# A backend that waits out an outage calls `waiting(message)` before each backoff sleep and every few seconds
# while it sleeps. The workers install a hook that heartbeats the running activity (it is a no-op outside
# one), so a long wait never looks like a dead worker; the storage layer itself knows nothing of Temporal.
# The hook is process-wide and called in the waiting thread: a thread-aware hook (Temporal's
# `activity.heartbeat` is) heartbeats whichever activity that thread runs. Its exceptions propagate (e.g. an
# activity's cancellation raised from a heartbeat ends the wait).

WaitingHook = Callable[[str], None]
WAIT_REPORT_S = 2.0  # while waiting, the hook is called at least this often
_waiting_hook: WaitingHook | None = None


def set_waiting_hook(hook: WaitingHook | None) -> WaitingHook | None:
    """Install `hook` (None removes it); returns the previous one."""
    global _waiting_hook
    previous, _waiting_hook = _waiting_hook, hook
    return previous


def waiting_hook() -> WaitingHook | None:
    return _waiting_hook


def waiting(message: str) -> None:
    """Tell the installed hook (if any) that a storage call is waiting; `message` is one line."""
    hook = _waiting_hook
    if hook is not None:
        hook(message)


class StorageError(RuntimeError):
    """A storage problem that retrying will not fix (bad URL, access denied, no such bucket)."""


class StorageUnavailable(RuntimeError):
    """The object store did not answer properly (connection refused, timeout, 5xx, failed checksum), also after
    the retries inside the call. `waited_s` is how long the call waited; `budget_exhausted` is True when it
    waited its whole outage budget (LONGSONG_STORAGE_RETRY_S > 0): retrying the activity would only multiply
    the wait, so the activities report it as non-retryable. The message is one line naming the root cause."""

    def __init__(self, message: str, waited_s: float = 0.0, budget_exhausted: bool = False):
        super().__init__(message)
        self.waited_s = waited_s
        self.budget_exhausted = budget_exhausted


@dataclass
class ObjectInfo:
    key: str
    size: int
    sha256: str


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


class Storage(ABC):
    """What activities, client and CLI need from an object store."""

    url: str

    @abstractmethod
    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream",
                 metadata: dict[str, str] | None = None) -> ObjectInfo: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abstractmethod
    def link(self, key: str, expires: timedelta | None = None) -> str:
        """A URL a person can download the object from (presigned for S3, file:// locally)."""

    # Backends override these two to avoid the temporary file (both built-in ones do); the defaults go through
    # one under the data dir's tmp/ (longsong.atomic.temp_root), named for the sweeper, never the system /tmp.
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> ObjectInfo:
        with temp_dir("blob") as tmp:
            path = tmp / "blob"
            path.write_bytes(data)
            return self.put_file(key, path, content_type, metadata)

    def get_bytes(self, key: str) -> bytes:
        with temp_dir("blob") as tmp:
            path = tmp / "blob"
            self.get_file(key, path)
            return path.read_bytes()

    def local_path(self, key: str) -> Path | None:
        """The object as a file on this machine (the HTTP API streams it with Range support), or None when the
        store is remote (the API redirects to a fresh `link` instead)."""
        return None

    def sweep_temporary(self) -> list[str]:
        """Remove temporary objects or files that crashed writers left behind (the file store's .tmp/);
        returns what was removed. Workers call it at start. Atomic object stores (S3) have none."""
        return []
