"""What an S3 failure means for the caller, and the bounded retries of the transient ones.

`StorageError` (from longsong.storage) for what retrying cannot fix - a bad URL or setting, access denied,
wrong credentials, no such bucket; `StorageUnavailable` for transient failures (connection refused, timeouts,
5xx, an upload whose checksum did not verify) that persisted through a few retries with backoff inside the
call. A missing object is `FileNotFoundError`, as with the filesystem backend. Every message is one line.
Exceptions that are not the SDK's or urllib3's (e.g. cancellation) pass through untouched, never retried.
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from longsong.storage.base import StorageError, StorageUnavailable

log = logging.getLogger("longsong.storage.s3")

T = TypeVar("T")

# S3 error codes that a retry can fix; any other code with a 4xx status is permanent.
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted", "BadDigest",
    "IncompleteBody", "XAmzContentSHA256Mismatch", "XMinioServerNotInitialized", "XMinioReadQuorum",
    "XMinioWriteQuorum",
}


class Corrupted(Exception):
    """Uploaded/downloaded bytes did not match their checksum (retried like a transient error)."""


@dataclass(frozen=True)
class Caller:
    """Runs SDK calls on one bucket: `caller(op, fn, key)` retries transient failures with exponential
    backoff (at most `attempts` tries) and maps every failure to longsong's error types."""

    bucket: str
    prefix: str
    endpoint: str
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def describe(self, exc: BaseException, op: str, key: str | None) -> tuple[str, str] | None:
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
            status = _response_code(exc)
            kind = "transient" if status >= 500 or status in (408, 429) else "permanent"
            return kind, (f"S3 {op} on {at}: unexpected non-S3 answer (HTTP {status}): is {self.endpoint} an S3 "
                          f"endpoint (AWS_ENDPOINT_URL_S3)?")
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            return self.describe(exc.reason, op, key)
        if isinstance(exc, urllib3.exceptions.SSLError):
            return "permanent", (f"S3 {op}: TLS failure talking to {self.endpoint}: {_reason(exc)} (an http:// "
                                 f"endpoint means no TLS; AWS_CA_BUNDLE names a private CA)")
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return "transient", f"S3 {op}: cannot connect to {self.endpoint}: {_reason(exc)}"
        if isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError,
                            TimeoutError)):
            return "transient", f"S3 {op} on {at}: {type(exc).__name__}: {_reason(exc)}"
        if isinstance(exc, Corrupted):
            return "transient", f"S3 {op} on {at}: {exc}"
        return None

    def __call__(self, op: str, fn: Callable[[], T], key: str | None = None) -> T:
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:  # classified below; anything unknown (e.g. cancellation) is re-raised as is
                described = self.describe(exc, op, key)
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
                delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")


def _response_code(exc: InvalidResponseError) -> int:
    """The HTTP status of a non-XML answer. The SDK exposes it only in its message ("Response code: 503")."""
    m = re.search(r"Response code: (\d+)", str(exc))
    return int(m.group(1)) if m else 0


def _reason(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
