"""Object storage behind one small interface: local filesystem (default) or S3/MinIO (`storage.s3`)."""

from __future__ import annotations

from urllib.parse import urlparse

from longsong.settings import Settings
from longsong.storage.base import COMMIT_MARKER, ObjectInfo, Storage, StorageError, StorageUnavailable
from longsong.storage.files import FileStorage

__all__ = ["COMMIT_MARKER", "FileStorage", "ObjectInfo", "Storage", "StorageError", "StorageUnavailable",
           "open_storage"]


def open_storage(url: str | None = None, settings: Settings | None = None) -> Storage:
    """`file:///path`, a plain path, or `s3://bucket/prefix`; default: LONGSONG_STORAGE's, else
    `$LONGSONG_HOME/objects`."""
    settings = settings or Settings.from_env()
    url = url or settings.storage_url
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileStorage(parsed.path if parsed.scheme else url)
    if parsed.scheme == "s3":
        from longsong.storage.s3 import S3Storage

        return S3Storage.from_url(url, settings)
    raise StorageError(
        f"LONGSONG_STORAGE: unsupported storage URL {url!r} (allowed: file:///path, /path, s3://bucket/prefix)")
