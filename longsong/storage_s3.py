"""S3 / MinIO object storage (the minio SDK) behind the `Storage` interface.

Selected by `LONGSONG_STORAGE=s3://bucket/prefix`. Endpoint and credentials come from the standard AWS
variables, so existing MinIO/S3 setups work unchanged:

    AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL)   http://minio:9000 -> no TLS; https://... or unset (AWS S3) -> TLS
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY     required (or AWS_WEB_IDENTITY_TOKEN_FILE for EKS IRSA roles)
    AWS_SESSION_TOKEN                            optional, temporary credentials
    AWS_REGION (or AWS_DEFAULT_REGION)           optional; found from the bucket when unset
    AWS_CA_BUNDLE                                optional CA file for a private TLS endpoint

longsong's own settings for this backend:

    LONGSONG_LINK_EXPIRY          presigned link lifetime, "24h" (default), "7d", "3600s", "90m"; at most 7 days
    LONGSONG_LINK_ENDPOINT        endpoint people download from when it differs from the workers' one
                                  (e.g. http://localhost:9000 while workers use http://minio:9000)
    LONGSONG_SCRATCH_EXPIRY_DAYS  lifecycle rule: scratch objects under {prefix}work/ expire after N days
                                  (default 2; "off" disables) - covers songs that failed before cleanup
    LONGSONG_RETENTION_DAYS       lifecycle rule: finished tracks under {prefix}audio/ expire after N days
                                  (default off; 30 is a sensible production value)

What happens at start (`from_url`, i.e. at worker start): the bucket is checked and created when missing
(private: no policy is ever set; a public bucket policy is reported as a warning), and the lifecycle rules
above are set for this prefix (rules of other prefixes or tools are kept).

Errors: `StorageError` (from longsong.storage) for what retrying cannot fix - a bad URL or setting, access
denied, wrong credentials, no such bucket; `StorageUnavailable` for transient failures (connection refused,
timeouts, 5xx, an upload whose checksum did not verify) that persisted through a few retries with backoff
inside the call. A missing object is `FileNotFoundError`, as with the filesystem backend.

Integrity: the SDK signs each request body's SHA-256 (http) or sends its Content-MD5 (https), so the server
rejects a corrupted body; after an upload the returned ETag is compared with the MD5 (multipart: MD5 of the
part MD5s) computed locally; the SHA-256 is stored as object metadata (`x-amz-meta-sha256`) and checked
again on every download. Files larger than `part_size` (16 MiB) go up as multipart uploads.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import mimetypes
import os
import random
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import quote, urlparse

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.credentials import IamAwsProvider
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule

from longsong.storage import ObjectInfo, Storage, StorageError, _check_key

log = logging.getLogger("longsong.storage_s3")

T = TypeVar("T")

DEFAULT_LINK_EXPIRY = timedelta(hours=24)
MAX_LINK_EXPIRY = timedelta(days=7)  # SigV4 presigned URLs cannot live longer
DEFAULT_SCRATCH_EXPIRY_DAYS = 2
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 minimum for all parts but the last
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
RULE_PREFIX = "longsong-"

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

# S3 error codes that a retry can fix; any other code with a 4xx status is permanent.
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted", "BadDigest",
    "IncompleteBody", "XAmzContentSHA256Mismatch", "XMinioServerNotInitialized", "XMinioReadQuorum",
    "XMinioWriteQuorum",
}
_NO_LIFECYCLE_CODES = {"AccessDenied", "NotImplemented", "MethodNotAllowed", "XMinioNotImplemented"}


class StorageUnavailable(RuntimeError):
    """The object store did not answer properly (connection refused, timeout, 5xx, failed checksum) after the
    bounded retries inside the call. Retryable: a later attempt may succeed."""


class _Corrupted(Exception):
    """Uploaded/downloaded bytes did not match their checksum (retried like a transient error)."""


def parse_link_expiry(text: str, setting: str = "LONGSONG_LINK_EXPIRY") -> timedelta:
    """'3600', '3600s', '90m', '24h', '7d', '1w', '1h30m' -> timedelta; between 1 s and 7 days."""
    raw = text.strip().lower()
    parts = re.findall(r"(\d+)\s*([smhdw]?)", raw)
    if not raw or not parts or re.sub(r"(\d+)\s*([smhdw]?)", "", raw).strip():
        raise StorageError(f"{setting}: cannot read {text!r} as a duration (examples: 3600s, 90m, 24h, 7d)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    seconds = sum(int(n) * unit[u] for n, u in parts)
    return check_link_expiry(timedelta(seconds=seconds), setting)


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


def parse_days(text: str | None, setting: str, default: int | None) -> int | None:
    """'' -> default; '0'/'off'/'none'/'false' -> None (rule off); '30' or '30d' -> 30."""
    if text is None or not text.strip():
        return default
    raw = text.strip().lower()
    if raw in ("0", "off", "none", "false", "no", "disabled"):
        return None
    m = re.fullmatch(r"(\d+)\s*d?", raw)
    if not m:
        raise StorageError(f"{setting}: expected a number of days (e.g. 2, 30) or 'off', got {text!r}")
    return int(m.group(1)) or None


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_bucket(bucket: str, url: str) -> str:
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


def _check_prefix(prefix: str, url: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    if any(p in ("", ".", "..") for p in prefix.split("/")):
        raise StorageError(f"LONGSONG_STORAGE: bad prefix {prefix!r} in {url!r} (no empty, '.' or '..' parts)")
    return prefix + "/"


def _parse_endpoint(endpoint: str, setting: str = "AWS_ENDPOINT_URL_S3") -> tuple[str, bool]:
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


def _content_type(key: str, given: str) -> str:
    if given and given != "application/octet-stream":
        return given
    ext = os.path.splitext(key)[1].lower()
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _meta_key(name: str) -> str:
    k = re.sub(r"[^a-z0-9-]+", "-", name.strip().lower().replace("_", "-")).strip("-")
    if not k:
        raise StorageError(f"object metadata: unusable key {name!r}")
    return k


def _meta_value(value: Any) -> str:
    text = str(value)
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=" /:=,;@+")  # HTTP headers carry printable ASCII only


def _digests(path: str | Path, part_size: int) -> tuple[str, str, int]:
    """(sha256 hex, expected S3 ETag, size) in one pass, reading part by part."""
    sha = hashlib.sha256()
    part_md5s: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
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


def _rule_id(kind: str, prefix: str) -> str:
    rid = f"{RULE_PREFIX}{kind}:{prefix}"
    if len(rid) > 255:
        rid = f"{RULE_PREFIX}{kind}:{hashlib.sha256(prefix.encode()).hexdigest()[:32]}"
    return rid


class S3Storage(Storage):
    """Objects in `bucket` under `prefix`; keys are the same as for FileStorage."""

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
        link_expiry: timedelta = DEFAULT_LINK_EXPIRY,
        scratch_expiry_days: int | None = DEFAULT_SCRATCH_EXPIRY_DAYS,
        retention_days: int | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        attempts: int = 4,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 8.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        verify_etag: bool = True,
        init: bool = True,
    ):
        self.bucket = _check_bucket(bucket, f"s3://{bucket}")
        self.prefix = _check_prefix(prefix, f"s3://{bucket}/{prefix}")
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.host, self.secure = _parse_endpoint(endpoint)
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
        self.attempts = max(1, attempts)
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.verify_etag = verify_etag

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=False,  # retries (with backoff and error classification) happen in _call
        )
        self._client = Minio(self.host, access_key=access_key or None, secret_key=secret_key or None,
                             session_token=session_token or None, secure=self.secure, region=self.region,
                             http_client=http, credentials=credentials)
        self._link_client: Minio | None = self._client
        self.link_endpoint: str | None = None
        if link_endpoint:
            link_host, link_secure = _parse_endpoint(link_endpoint, "LONGSONG_LINK_ENDPOINT")
            self.link_endpoint = f"{'https' if link_secure else 'http'}://{link_host}"

            def make_link_client(region: str) -> Minio:
                # Presigning is offline once the region is known; the signature covers the public host name.
                return Minio(link_host, access_key=access_key or None, secret_key=secret_key or None,
                             session_token=session_token or None, secure=link_secure, region=region,
                             http_client=http, credentials=credentials)

            self._make_link_client = make_link_client
            self._link_client = make_link_client(self.region) if self.region else None
        if init:
            self.ensure_bucket()
            self.ensure_lifecycle()
            self.warn_if_public()

    # ----------------------------------------------------------------- construction from settings

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None, **overrides: Any) -> "S3Storage":
        """`s3://bucket/prefix` with settings from `env` (default: os.environ); connects and prepares the bucket."""
        env = os.environ if env is None else env
        p = urlparse(url)
        if p.scheme != "s3":
            raise StorageError(f"LONGSONG_STORAGE: {url!r} is not an s3:// URL")
        if "@" in p.netloc or p.query or p.fragment or p.params or ":" in p.netloc:
            raise StorageError(
                f"LONGSONG_STORAGE: {url!r}: an s3:// URL is just s3://bucket/prefix; put the endpoint in "
                f"AWS_ENDPOINT_URL_S3 and credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        bucket = _check_bucket(p.netloc, url)
        prefix = _check_prefix(p.path, url)
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT
        credentials = None
        access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not access_key and not secret_key and env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            credentials = IamAwsProvider()  # EKS IRSA: role from AWS_ROLE_ARN + the token file
        expiry_text = env.get("LONGSONG_LINK_EXPIRY")
        kwargs: dict[str, Any] = dict(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=env.get("AWS_SESSION_TOKEN"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            credentials=credentials,
            ca_file=env.get("AWS_CA_BUNDLE") or None,
            link_endpoint=env.get("LONGSONG_LINK_ENDPOINT") or None,
            link_expiry=parse_link_expiry(expiry_text) if expiry_text and expiry_text.strip() else
            DEFAULT_LINK_EXPIRY,
            scratch_expiry_days=parse_days(env.get("LONGSONG_SCRATCH_EXPIRY_DAYS"), "LONGSONG_SCRATCH_EXPIRY_DAYS",
                                           DEFAULT_SCRATCH_EXPIRY_DAYS),
            retention_days=parse_days(env.get("LONGSONG_RETENTION_DAYS"), "LONGSONG_RETENTION_DAYS", None),
        )
        kwargs.update(overrides)
        return cls(bucket, prefix, **kwargs)

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, endpoint={self.endpoint!r})"

    # ----------------------------------------------------------------- error handling and retries

    def _describe(self, exc: BaseException, op: str, key: str | None) -> tuple[str, str] | None:
        """('permanent'|'transient'|'missing', one-line message), or None for an exception that is not ours."""
        where = f"s3://{self.bucket}/{self.prefix}{key}" if key is not None else f"s3://{self.bucket}"
        at = f"{where} at {self.endpoint}"
        if isinstance(exc, S3Error):
            code = exc.code or ""
            status = getattr(exc.response, "status", 0) or 0
            if code == "NoSuchKey" and key is not None:
                return "missing", f"no object {key!r} in {self.url}"
            if code == "NoSuchBucket":
                return "permanent", (f"S3 {op}: bucket {self.bucket!r} does not exist at {self.endpoint} "
                                     f"(create it, or let longsong create it with credentials allowed to)")
            if code == "AccessDenied":
                return "permanent", (f"S3 {op}: access denied to {at}: check AWS_ACCESS_KEY_ID / "
                                     f"AWS_SECRET_ACCESS_KEY and the bucket's policy")
            if code in ("InvalidAccessKeyId", "InvalidClientTokenId", "InvalidToken", "ExpiredToken"):
                return "permanent", (f"S3 {op}: the server rejects the credentials ({code}) at {self.endpoint}: "
                                     f"check AWS_ACCESS_KEY_ID (and AWS_SESSION_TOKEN)")
            if code == "SignatureDoesNotMatch":
                return "permanent", (f"S3 {op}: signature mismatch at {self.endpoint}: AWS_SECRET_ACCESS_KEY does "
                                     f"not match AWS_ACCESS_KEY_ID (or AWS_REGION is wrong)")
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
                return "permanent", (f"S3 {op}: bucket {self.bucket!r} is in another region ({code}): "
                                     f"set AWS_REGION to the bucket's region")
            if code == "RequestTimeTooSkewed":
                return "permanent", (f"S3 {op}: this machine's clock is too far from {self.endpoint}'s: "
                                     f"synchronise it (NTP)")
            if code in _TRANSIENT_CODES or (status >= 500 and status != 501 and "NotImplemented" not in code):
                return "transient", f"S3 {op} on {at}: {code or status}: {exc.message}"
            return "permanent", f"S3 {op} on {at} failed: {code or status}: {exc.message}"
        if isinstance(exc, ServerError):
            return "transient", f"S3 {op} on {at}: server error {exc.status_code}"
        if isinstance(exc, InvalidResponseError):
            status = getattr(exc, "_code", 0) or 0
            kind = "transient" if status >= 500 or status in (408, 429) else "permanent"
            return kind, (f"S3 {op} on {at}: unexpected non-S3 answer (HTTP {status}): is {self.endpoint} an S3 "
                          f"endpoint (AWS_ENDPOINT_URL_S3)?")
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            return self._describe(exc.reason, op, key)
        if isinstance(exc, urllib3.exceptions.SSLError):
            return "permanent", (f"S3 {op}: TLS failure talking to {self.endpoint}: {_reason(exc)} (an http:// "
                                 f"endpoint means no TLS; AWS_CA_BUNDLE names a private CA)")
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return "transient", f"S3 {op}: cannot connect to {self.endpoint}: {_reason(exc)}"
        if isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError,
                            TimeoutError)):
            return "transient", f"S3 {op} on {at}: {type(exc).__name__}: {_reason(exc)}"
        if isinstance(exc, _Corrupted):
            return "transient", f"S3 {op} on {at}: {exc}"
        return None

    def _call(self, op: str, fn: Callable[[], T], key: str | None = None) -> T:
        delay = self.retry_base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:  # classified below; anything unknown (e.g. cancellation) is re-raised as is
                described = self._describe(exc, op, key)
                if described is None:
                    raise
                kind, message = described
                if kind == "missing":
                    raise FileNotFoundError(message) from exc
                if kind == "permanent":
                    raise StorageError(message) from exc
                if attempt == self.attempts:
                    raise StorageUnavailable(f"{message} (gave up after {attempt} attempts)") from exc
                log.warning("%s; retrying in %.1f s (attempt %d of %d)", message, delay, attempt, self.attempts)
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.retry_max_delay)
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- bucket preparation

    def ensure_bucket(self) -> None:
        """Create the bucket when missing; a clear StorageError when that is not allowed."""
        if self._call("bucket check", lambda: self._client.bucket_exists(self.bucket)):
            return
        try:
            self._call("create bucket", lambda: self._client.make_bucket(self.bucket, location=self.region))
            log.info("created bucket %s at %s", self.bucket, self.endpoint)
        except StorageError as e:
            cause = e.__cause__
            code = getattr(cause, "code", "")
            if code in ("BucketAlreadyOwnedByYou",):  # another worker made it a moment ago
                return
            if code == "BucketAlreadyExists":
                raise StorageError(f"S3 storage: bucket name {self.bucket!r} is taken by another account; "
                                   f"choose another bucket in LONGSONG_STORAGE") from cause
            raise StorageError(
                f"S3 storage: bucket {self.bucket!r} does not exist at {self.endpoint} and could not be created "
                f"({code or e}); create it first (e.g. `mc mb`), or use credentials allowed to create buckets"
            ) from cause

    def _wanted_rules(self) -> dict[str, Rule]:
        p = self.prefix
        rules = {
            _rule_id("multipart", p): Rule(ENABLED, rule_filter=Filter(prefix=p), rule_id=_rule_id("multipart", p),
                                           abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(1)),
        }
        if self.scratch_expiry_days:
            rid = _rule_id("scratch", p)
            rules[rid] = Rule(ENABLED, rule_filter=Filter(prefix=f"{p}work/"), rule_id=rid,
                              expiration=Expiration(days=self.scratch_expiry_days))
        if self.retention_days:
            rid = _rule_id("retention", p)
            rules[rid] = Rule(ENABLED, rule_filter=Filter(prefix=f"{p}audio/"), rule_id=rid,
                              expiration=Expiration(days=self.retention_days))
        return rules

    def _set_rules(self, rules: list[Rule]) -> None:
        if rules:
            self._call("set lifecycle", lambda: self._client.set_bucket_lifecycle(self.bucket, LifecycleConfig(rules)))
        else:
            self._call("delete lifecycle", lambda: self._client.delete_bucket_lifecycle(self.bucket))

    def ensure_lifecycle(self) -> None:
        """Set this prefix's lifecycle rules (scratch expiry, retention, stale multipart uploads); keep others."""
        ours = {_rule_id(kind, self.prefix) for kind in ("multipart", "scratch", "retention")}
        wanted = self._wanted_rules()
        mpu = _rule_id("multipart", self.prefix)
        core = {k: v for k, v in wanted.items() if k != mpu}
        try:
            current = self._call("read lifecycle", lambda: self._client.get_bucket_lifecycle(self.bucket))
            rules = list(current.rules) if current else []
            have = {r.rule_id: r for r in rules if r.rule_id in ours}
            if have in (wanted, core):
                return
            others = [r for r in rules if r.rule_id not in ours]
            try:
                self._set_rules(others + list(wanted.values()))
            except StorageError:
                # MinIO does not implement AbortIncompleteMultipartUpload (it cleans stale uploads by itself).
                self._set_rules(others + list(core.values()))
            log.info("lifecycle rules for %s: scratch expiry %s, retention %s", self.url,
                     f"{self.scratch_expiry_days} d" if self.scratch_expiry_days else "off",
                     f"{self.retention_days} d" if self.retention_days else "off")
        except StorageError as e:
            code = getattr(e.__cause__, "code", "")
            if code not in _NO_LIFECYCLE_CODES:
                raise
            if self.retention_days:
                raise StorageError(
                    f"LONGSONG_RETENTION_DAYS={self.retention_days} needs a bucket lifecycle rule, but bucket "
                    f"{self.bucket!r} refuses it ({code}); allow s3:PutLifecycleConfiguration or unset it") from e
            log.warning("could not set lifecycle rules on bucket %s (%s): scratch objects of failed songs under "
                        "%swork/ will not expire by themselves", self.bucket, code, self.prefix)

    def warn_if_public(self) -> bool:
        """Log a warning when a bucket policy grants anonymous reads (longsong never sets one)."""
        try:
            text = self._call("read policy", lambda: self._client.get_bucket_policy(self.bucket))
        except (StorageError, StorageUnavailable):
            return False  # no policy (NoSuchBucketPolicy), or not allowed to read it: nothing to report
        try:
            statements = json.loads(text).get("Statement", [])
        except (ValueError, AttributeError):
            return False
        for st in statements if isinstance(statements, list) else [statements]:
            principal = st.get("Principal")
            anyone = principal == "*" or (isinstance(principal, dict) and principal.get("AWS") in ("*", ["*"]))
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if st.get("Effect") == "Allow" and anyone and any(a in ("s3:GetObject", "s3:*", "*") for a in actions):
                log.warning("bucket %s has a policy that lets anyone read objects; longsong tracks are meant to be "
                            "private (downloads use presigned links): remove it, e.g. `mc anonymous set none`",
                            self.bucket)
                return True
        return False

    # ----------------------------------------------------------------- Storage interface

    def _name(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def put_file(self, key, path, content_type="application/octet-stream", metadata=None):
        name = self._name(key)
        sha, etag, size = _digests(path, self.part_size)
        headers = {_meta_key(k): _meta_value(v) for k, v in (metadata or {}).items()}
        headers["sha256"] = sha
        ctype = _content_type(key, content_type)

        def upload() -> None:
            result = self._client.fput_object(self.bucket, name, str(path), content_type=ctype, metadata=headers,
                                              part_size=self.part_size)
            got = (result.etag or "").strip('"').lower()
            hdrs = result.http_headers or {}
            encrypted = (hdrs.get("x-amz-server-side-encryption", "").startswith("aws:kms")
                         or hdrs.get("x-amz-server-side-encryption-customer-algorithm"))
            if self.verify_etag and not encrypted and re.fullmatch(r"[0-9a-f]{32}(-\d+)?", got) and got != etag:
                raise _Corrupted(f"uploaded object's ETag {got} does not match the local content ({etag})")

        self._call("upload", upload, key)
        return ObjectInfo(key, size, sha)

    def get_file(self, key, path):
        name = self._name(key)
        dest = Path(path)

        def download() -> None:
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
            response = self._client.get_object(self.bucket, name)
            try:
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
                    raise _Corrupted(f"download ended after {n} of {length} bytes")
                if want and want.lower() != sha.hexdigest():
                    raise _Corrupted(f"downloaded bytes do not match the stored sha256 {want}")
                os.replace(tmp, dest)
            finally:
                response.close()
                response.release_conn()
                tmp.unlink(missing_ok=True)

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
                raise _Corrupted(f"downloaded bytes do not match the stored sha256 {want}")
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
            region = self._call("bucket region", lambda: self._client._get_region(self.bucket))
            self._link_client = self._make_link_client(region)
        client = self._link_client
        return self._call("presign", lambda: client.presigned_get_object(self.bucket, name, expires=exp), key)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
