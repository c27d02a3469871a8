"""What S3 accepts as names and headers: bucket, prefix and endpoint checks, content types, metadata headers.

Every check raises `StorageError` with one line naming the setting it came from.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import os
import re
from typing import Any
from urllib.parse import quote, urlparse

from longsong.storage.base import StorageError

DEFAULT_ENDPOINT = "https://s3.amazonaws.com"

CONTENT_TYPES = {
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".npy": "application/octet-stream",
}

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_bucket(bucket: str, url: str) -> str:
    if not bucket:
        raise StorageError(f"LONGSONG_STORAGE: {url!r} names no bucket (expected s3://bucket/prefix)")
    try:
        ipaddress.ip_address(bucket)
        is_ip = True
    except ValueError:
        is_ip = False
    if not _BUCKET_RE.match(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket or is_ip:
        raise StorageError(
            f"LONGSONG_STORAGE: {bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase letters, "
            f"digits, '-' and '.')")
    return bucket


def check_prefix(prefix: str, url: str) -> str:
    """'a/b/' or '/a/b' -> 'a/b/' (keys are appended to it); '' stays ''."""
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    if any(p in ("", ".", "..") for p in prefix.split("/")):
        raise StorageError(f"LONGSONG_STORAGE: bad prefix {prefix!r} in {url!r} (no empty, '.' or '..' parts)")
    return prefix + "/"


def parse_endpoint(endpoint: str, setting: str = "AWS_ENDPOINT_URL_S3") -> tuple[str, bool]:
    """'http://host:port' -> ('host:port', secure=False); https or bare host -> TLS."""
    text = endpoint.strip()
    if "://" not in text:
        text = "https://" + text
    p = urlparse(text)
    if p.scheme not in ("http", "https") or not p.netloc or p.path not in ("", "/") or p.query or p.fragment:
        raise StorageError(
            f"{setting}: {endpoint!r} is not an endpoint URL (expected http://host:port or https://host)")
    if p.username or p.password:
        raise StorageError(f"{setting}: put credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                           "not in the URL")
    try:
        p.port
    except ValueError as e:
        raise StorageError(f"{setting}: {endpoint!r}: {e}") from e
    return p.netloc, p.scheme == "https"


def content_type_for(key: str, given: str) -> str:
    """An explicit type wins; the generic default is replaced by one guessed from the extension."""
    if given and given != "application/octet-stream":
        return given
    ext = os.path.splitext(key)[1].lower()
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def meta_key(name: str) -> str:
    """A metadata name as an `x-amz-meta-*` header suffix: lowercase, '_' and other characters as '-'."""
    k = re.sub(r"[^a-z0-9-]+", "-", name.strip().lower().replace("_", "-")).strip("-")
    if not k:
        raise StorageError(f"object metadata: unusable key {name!r}")
    return k


def meta_value(value: Any) -> str:
    text = str(value)
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=" /:=,;@+")  # HTTP headers carry printable ASCII only
