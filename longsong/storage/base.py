"""The object-store interface every backend implements, its errors and key rules.

Keys are '/'-separated ("work/{request_id}/seg-000.npy", "audio/{user}/{request}/track.mp3").
Writes are atomic: an object is either absent or complete, never half written.
A track folder is complete once its `metadata.json` exists (written last: the commit marker).
"""

from __future__ import annotations

import hashlib
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

COMMIT_MARKER = "metadata.json"


class StorageError(RuntimeError):
    """A storage problem that retrying will not fix (bad URL, access denied, no such bucket)."""


class StorageUnavailable(RuntimeError):
    """The object store did not answer properly (connection refused, timeout, 5xx, failed checksum) after the
    bounded retries inside the call. Retryable: a later attempt may succeed."""


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

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> ObjectInfo:
        with tempfile.TemporaryDirectory(prefix="longsong-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self.put_file(key, path, content_type, metadata)

    def get_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="longsong-") as tmp:
            path = Path(tmp) / "blob"
            self.get_file(key, path)
            return path.read_bytes()
