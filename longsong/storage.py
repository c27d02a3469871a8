"""Object storage behind one small interface: local filesystem (default) or S3/MinIO.

Keys are '/'-separated ("work/{request_id}/seg-000.npy", "audio/{user}/{request}/track.mp3").
Writes are atomic: an object is either absent or complete, never half written.
A track folder is complete once its `metadata.json` exists (written last: the commit marker).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

COMMIT_MARKER = "metadata.json"


class StorageError(RuntimeError):
    """A storage problem that retrying will not fix (bad URL, access denied, no such bucket)."""


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


def _check_key(key: str) -> str:
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


class FileStorage(Storage):
    """Objects as files under a root folder; temp file in `{root}/.tmp` then rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        try:
            (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".tmp" / f"probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StorageError(f"storage folder {self.root} is not writable: {e.strerror}") from e

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _publish(self, key: str, write) -> ObjectInfo:
        """Write through `write(tmp_path)` into {root}/.tmp, then rename into place (atomic)."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".tmp" / f"{uuid.uuid4().hex}"
        try:
            write(tmp)
            info = ObjectInfo(key, tmp.stat().st_size, sha256_file(tmp))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return info

    def put_file(self, key, path, content_type="application/octet-stream", metadata=None):
        return self._publish(key, lambda tmp: shutil.copyfile(path, tmp))

    def put_bytes(self, key, data, content_type="application/octet-stream", metadata=None):
        return self._publish(key, lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key):
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.url}")
        return src.read_bytes()

    def get_file(self, key, path):
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.url}")
        shutil.copyfile(src, path)

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix):
        base = self.root
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == base:
                dirnames[:] = [d for d in dirnames if d != ".tmp"]
            for name in filenames:
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete_prefix(self, prefix):
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        folder = self.root / prefix.rstrip("/")
        if prefix.endswith("/") and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        return len(keys)

    def link(self, key, expires=None):
        return self._path(key).as_uri()


def default_storage_url() -> str:
    from longsong.config import home

    return (home() / "objects").as_uri()


def open_storage(url: str | None = None) -> Storage:
    """`file:///path`, a plain path, or `s3://bucket/prefix`; default: `$LONGSONG_HOME/objects`."""
    url = url or os.environ.get("LONGSONG_STORAGE") or default_storage_url()
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileStorage(parsed.path if parsed.scheme else url)
    if parsed.scheme == "s3":
        from longsong.storage_s3 import S3Storage

        return S3Storage.from_url(url)
    raise StorageError(
        f"LONGSONG_STORAGE: unsupported storage URL {url!r} (allowed: file:///path, /path, s3://bucket/prefix)")
