"""`S3Storage`: the `Storage` interface on an S3 / MinIO bucket, through the minio SDK.

Integrity: the SDK signs each request body's SHA-256 (http) or sends its Content-MD5 (https), so the server
rejects a corrupted body; after an upload the returned ETag is compared with the MD5 (multipart: MD5 of the
part MD5s) computed locally; the SHA-256 is stored as object metadata (`x-amz-meta-sha256`) and checked
again on every download. Files larger than `part_size` (16 MiB) go up as multipart uploads.

Outages: every request has LONGSONG_STORAGE_TIMEOUT_S as its connect and read timeout, and transient failures
are retried (backoff, heartbeating through `longsong.storage.base.waiting`) for LONGSONG_STORAGE_RETRY_S from
the start of the call (`errors.Caller`). `put_bytes`/`get_bytes` work in memory: no temporary files.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlparse

import certifi
import urllib3
from minio import Minio
from minio.credentials import IamAwsProvider
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError

from longsong.atomic import replacing
from longsong.settings import MAX_LINK_EXPIRY, Settings
from longsong.storage.base import ObjectInfo, Storage, StorageError, check_key
from longsong.storage.s3 import lifecycle
from longsong.storage.s3.errors import Caller, Corrupted
from longsong.storage.s3.names import (
    DEFAULT_ENDPOINT,
    check_bucket,
    check_prefix,
    content_type_for,
    meta_key,
    meta_value,
    parse_endpoint,
)

DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 minimum for all parts but the last
DEFAULT_REGION = "us-east-1"  # what MinIO (without a configured region) and minio-py assume


def check_link_expiry(expires: timedelta, setting: str = "link expiry") -> timedelta:
    if expires > MAX_LINK_EXPIRY:
        raise StorageError(
            f"{setting}: {_fmt_td(expires)} is longer than the 7 days a presigned S3 link can last (SigV4 limit)")
    if expires < timedelta(seconds=1):
        raise StorageError(f"{setting}: a link must stay valid for at least 1 second, got {_fmt_td(expires)}")
    return expires


def _fmt_td(td: timedelta) -> str:
    s = int(td.total_seconds())
    if s % 86400 == 0:
        return f"{s // 86400}d"
    if s % 3600 == 0:
        return f"{s // 3600}h"
    return f"{s}s"


def _digests(path: str | Path | bytes, part_size: int) -> tuple[str, str, int]:
    """(sha256 hex, expected S3 ETag, size) in one pass, reading part by part (a file, or bytes in memory)."""
    sha = hashlib.sha256()
    part_md5s: list[bytes] = []
    size = 0
    with (io.BytesIO(path) if isinstance(path, (bytes, bytearray, memoryview)) else open(path, "rb")) as f:
        while True:
            chunk = f.read(part_size)
            if not chunk and part_md5s:
                break
            sha.update(chunk)
            part_md5s.append(hashlib.md5(chunk).digest())
            size += len(chunk)
            if len(chunk) < part_size:
                break
    if len(part_md5s) == 1:
        etag = part_md5s[0].hex()
    else:
        etag = f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
    return sha.hexdigest(), etag, size


def bucket_region(http: urllib3.PoolManager, endpoint: str, bucket: str) -> str:
    """The region in the `x-amz-bucket-region` header of a HEAD of the bucket (AWS sends it even to an unsigned
    request, and on its redirects; MinIO sends it when it has a region), else DEFAULT_REGION."""
    response = http.request("HEAD", f"{endpoint}/{quote(bucket)}", redirect=False)
    region = response.headers.get("x-amz-bucket-region")
    if region:
        return region
    if response.status == 404:
        raise S3Error(response, "NoSuchBucket", "HEAD of the bucket: 404", f"/{bucket}", None, None, bucket)
    if response.status >= 500:
        raise ServerError(f"HEAD of bucket {bucket}: HTTP {response.status}", response.status)
    return DEFAULT_REGION


class S3Storage(Storage):
    """Objects in `bucket` under `prefix`; keys are the same as for FileStorage.
    Defaults of the LONGSONG_* options are `Settings`' defaults."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
        credentials: Any = None,
        ca_file: str | None = None,
        link_endpoint: str | None = None,
        link_expiry: timedelta = Settings.link_expiry,
        scratch_expiry_days: int | None = Settings.scratch_expiry_days,
        retention_days: int | None = Settings.retention_days,
        part_size: int = DEFAULT_PART_SIZE,
        retry_s: float = Settings.storage_retry_s,
        timeout_s: float = Settings.storage_timeout_s,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 10.0,
        verify_etag: bool = True,
        init: bool = True,
    ):
        self.bucket = check_bucket(bucket, f"s3://{bucket}")
        self.prefix = check_prefix(prefix, f"s3://{bucket}/{prefix}")
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.host, self.secure = parse_endpoint(endpoint)
        self.endpoint = f"{'https' if self.secure else 'http'}://{self.host}"
        if bool(access_key) != bool(secret_key):
            raise StorageError("S3 storage: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (only one is set)")
        if not access_key and credentials is None:
            raise StorageError(
                f"S3 storage {self.url}: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        self.region = region or None
        self.link_expiry = check_link_expiry(link_expiry, "LONGSONG_LINK_EXPIRY")
        for name, days in (("LONGSONG_SCRATCH_EXPIRY_DAYS", scratch_expiry_days),
                           ("LONGSONG_RETENTION_DAYS", retention_days)):
            if days is not None and days < 1:
                raise StorageError(f"{name}: expected at least 1 day or off, got {days}")
        self.scratch_expiry_days = scratch_expiry_days
        self.retention_days = retention_days
        if part_size < MIN_PART_SIZE:
            raise StorageError(f"S3 storage: part size {part_size} is below the S3 minimum of 5 MiB")
        self.part_size = part_size
        self.verify_etag = verify_etag
        if retry_s < 0 or timeout_s <= 0:
            raise StorageError(f"S3 storage: outage budget {retry_s:g} s and request timeout {timeout_s:g} s must "
                               f"be positive")
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self._call = Caller(self.bucket, self.prefix, self.endpoint, retry_s, retry_base_delay, retry_max_delay,
                            timeout_s)

        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=False,  # retries (with backoff and error classification) happen in self._call
        )
        self._client = Minio(self.host, access_key=access_key or None, secret_key=secret_key or None,
                             session_token=session_token or None, secure=self.secure, region=self.region,
                             http_client=self._http, credentials=credentials)
        self._link_client: Minio | None = self._client
        self.link_endpoint: str | None = None
        if link_endpoint:
            link_host, link_secure = parse_endpoint(link_endpoint, "LONGSONG_LINK_ENDPOINT")
            self.link_endpoint = f"{'https' if link_secure else 'http'}://{link_host}"

            def make_link_client(region: str) -> Minio:
                # Presigning is offline once the region is known; the signature covers the public host name.
                return Minio(link_host, access_key=access_key or None, secret_key=secret_key or None,
                             session_token=session_token or None, secure=link_secure, region=region,
                             http_client=self._http, credentials=credentials)

            self._make_link_client = make_link_client
            self._link_client = make_link_client(self.region) if self.region else None
        if init:
            lifecycle.ensure_bucket(self._client, self._call, self.region)
            lifecycle.ensure_lifecycle(self._client, self._call, self.scratch_expiry_days, self.retention_days)
            self.warn_if_public()

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None, env: Mapping[str, str] | None = None,
                 **overrides: Any) -> "S3Storage":
        """`s3://bucket/prefix` with the LONGSONG_* options of `settings` (default: read from `env`) and the
        AWS_* variables of `env` (default: os.environ); connects and prepares the bucket."""
        env = os.environ if env is None else env
        p = urlparse(url)
        if p.scheme != "s3":
            raise StorageError(f"LONGSONG_STORAGE: {url!r} is not an s3:// URL")
        if "@" in p.netloc or p.query or p.fragment or p.params or ":" in p.netloc:
            raise StorageError(
                f"LONGSONG_STORAGE: {url!r}: an s3:// URL is just s3://bucket/prefix; put the endpoint in "
                f"AWS_ENDPOINT_URL_S3 and credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        bucket = check_bucket(p.netloc, url)
        prefix = check_prefix(p.path, url)
        settings = Settings.from_env(env) if settings is None else settings
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT
        credentials = None
        access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not access_key and not secret_key and env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            credentials = IamAwsProvider()  # EKS IRSA: role from AWS_ROLE_ARN + the token file
        kwargs: dict[str, Any] = dict(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=env.get("AWS_SESSION_TOKEN"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            credentials=credentials,
            ca_file=env.get("AWS_CA_BUNDLE") or None,
            link_endpoint=settings.link_endpoint or None,
            link_expiry=settings.link_expiry,
            scratch_expiry_days=settings.scratch_expiry_days,
            retention_days=settings.retention_days,
            retry_s=settings.storage_retry_s,
            timeout_s=settings.storage_timeout_s,
        )
        kwargs.update(overrides)
        return cls(bucket, prefix, **kwargs)

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, endpoint={self.endpoint!r})"

    def warn_if_public(self) -> bool:
        """Log a warning when a bucket policy grants anonymous reads (longsong never sets one)."""
        return lifecycle.warn_if_public(self._client, self._call)

    # ----------------------------------------------------------------- Storage interface

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, key, path, content_type="application/octet-stream", metadata=None):
        return self._put(key, path, content_type, metadata)

    def put_bytes(self, key, data, content_type="application/octet-stream", metadata=None):
        return self._put(key, bytes(data), content_type, metadata)

    def _put(self, key: str, source: str | Path | bytes, content_type: str,
             metadata: dict[str, str] | None) -> ObjectInfo:
        """Upload a file (by path) or bytes; verified by ETag, the SHA-256 kept as object metadata."""
        name = self._name(key)
        sha, etag, size = _digests(source, self.part_size)
        headers = {meta_key(k): meta_value(v) for k, v in (metadata or {}).items()}
        headers["sha256"] = sha
        ctype = content_type_for(key, content_type)

        def upload() -> None:
            if isinstance(source, bytes):  # a fresh stream per attempt
                result = self._client.put_object(self.bucket, name, io.BytesIO(source), size, content_type=ctype,
                                                 metadata=headers, part_size=self.part_size)
            else:
                result = self._client.fput_object(self.bucket, name, str(source), content_type=ctype,
                                                  metadata=headers, part_size=self.part_size)
            got = (result.etag or "").strip('"').lower()
            hdrs = result.http_headers or {}
            encrypted = (hdrs.get("x-amz-server-side-encryption", "").startswith("aws:kms")
                         or hdrs.get("x-amz-server-side-encryption-customer-algorithm"))
            if self.verify_etag and not encrypted and re.fullmatch(r"[0-9a-f]{32}(-\d+)?", got) and got != etag:
                raise Corrupted(f"uploaded object's ETag {got} does not match the local content ({etag})")

        self._call("upload", upload, key)
        return ObjectInfo(key, size, sha)

    def get_file(self, key, path):
        name = self._name(key)
        dest = Path(path)

        def download() -> None:
            response = self._client.get_object(self.bucket, name)
            try:
                with replacing(dest) as tmp:
                    sha = hashlib.sha256()
                    n = 0
                    with open(tmp, "wb") as f:
                        for chunk in response.stream(1 << 20):
                            sha.update(chunk)
                            f.write(chunk)
                            n += len(chunk)
                    want = response.headers.get("x-amz-meta-sha256")
                    length = response.headers.get("content-length")
                    if length is not None and int(length) != n:
                        raise Corrupted(f"download ended after {n} of {length} bytes")
                    if want and want.lower() != sha.hexdigest():
                        raise Corrupted(f"downloaded bytes do not match the stored sha256 {want}")
            finally:
                response.close()
                response.release_conn()

        self._call("download", download, key)

    def get_bytes(self, key):
        name = self._name(key)

        def download() -> bytes:
            response = self._client.get_object(self.bucket, name)
            try:
                data = response.read()
                want = response.headers.get("x-amz-meta-sha256")
            finally:
                response.close()
                response.release_conn()
            if want and want.lower() != hashlib.sha256(data).hexdigest():
                raise Corrupted(f"downloaded bytes do not match the stored sha256 {want}")
            return data

        return self._call("download", download, key)

    def exists(self, key):
        name = self._name(key)
        try:
            self._call("stat", lambda: self._client.stat_object(self.bucket, name), key)
            return True
        except FileNotFoundError:
            return False

    def object_metadata(self, key: str) -> dict[str, str]:
        """User metadata (x-amz-meta-*, names lowercased, '_' written as '-') plus content-type and size."""
        name = self._name(key)
        st = self._call("stat", lambda: self._client.stat_object(self.bucket, name), key)
        out = {k.lower()[len("x-amz-meta-"):]: v for k, v in (st.metadata or {}).items()
               if k.lower().startswith("x-amz-meta-")}
        out["content-type"] = st.content_type or ""
        out["size"] = str(st.size)
        return out

    def list(self, prefix):
        full = self.prefix + prefix

        def listing() -> list[str]:
            return [o.object_name for o in self._client.list_objects(self.bucket, prefix=full, recursive=True)
                    if o.object_name and not o.is_dir]

        names = self._call("list", listing)
        return sorted(n[len(self.prefix):] for n in names)

    def delete_prefix(self, prefix):
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [DeleteObject(self.prefix + k) for k in keys[i:i + 1000]]

            def remove(batch=batch) -> list:
                return list(self._client.remove_objects(self.bucket, batch))

            errors = [e for e in self._call("delete", remove) if e.code != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StorageError(f"S3 delete under {self.url}{prefix}: {len(errors)} objects not deleted "
                                   f"(first: {first.name}: {first.code}: {first.message})")
        return len(keys)

    def link(self, key, expires=None):
        name = self._name(key)
        exp = self.link_expiry if expires is None else check_link_expiry(expires)
        if self._link_client is None:  # public endpoint, region not configured: ask the bucket once
            region = self._call("bucket region", lambda: bucket_region(self._http, self.endpoint, self.bucket))
            self._link_client = self._make_link_client(region)
        client = self._link_client
        return self._call("presign", lambda: client.presigned_get_object(self.bucket, name, expires=exp), key)
