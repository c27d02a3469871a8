"""What an S3 failure means for the caller, and waiting out the transient ones.

`StorageError` (from longsong.storage) for what retrying cannot fix - a bad URL or setting, access denied,
wrong credentials, no such bucket; a missing object is `FileNotFoundError`, as with the filesystem backend.
Transient failures (connection refused, timeouts, 5xx, an upload whose checksum did not verify) are retried
with capped, jittered exponential backoff until the outage budget (LONGSONG_STORAGE_RETRY_S) has passed since
the call began; meanwhile `longsong.storage.base.waiting` is told before each sleep and every few seconds (the
workers heartbeat the running activity from it). Then `StorageUnavailable`, one line naming the endpoint and
the root cause: "storage unreachable at http://minio:9000: connection refused (waited 300 s)".
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

from longsong.storage.base import WAIT_REPORT_S, StorageError, StorageUnavailable, waiting

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
    """Runs SDK calls on one bucket: `caller(op, fn, key)` retries transient failures with exponential backoff
    (from `base_delay`, doubling, at most `max_delay`, jittered) until `retry_s` seconds have passed since the
    call began, and maps every failure to longsong's error types. `retry_s=0`: one try, no waiting."""

    bucket: str
    prefix: str
    endpoint: str
    retry_s: float = 300.0
    base_delay: float = 0.5
    max_delay: float = 10.0
    timeout_s: float | None = None  # the requests' timeout, for messages

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

    def cause(self, exc: BaseException) -> tuple[bool, str]:
        """(reached the server?, short root cause) of a transient failure, e.g. (False, "connection refused")."""
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            return self.cause(exc.reason)
        if isinstance(exc, S3Error):
            return True, f"{exc.code or getattr(exc.response, 'status', '')}: {exc.message}"
        if isinstance(exc, ServerError):
            return True, f"server error {exc.status_code}"
        if isinstance(exc, InvalidResponseError):
            return True, f"unexpected non-S3 answer (HTTP {_response_code(exc)})"
        if isinstance(exc, Corrupted):
            return True, str(exc)
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # (a subclass of ConnectTimeoutError)
            return False, _lower_first(_reason(exc))
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
            return False, f"no connection within {_timeout_of(exc, self.timeout_s)} (connect timeout)"
        if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
            return False, f"no answer within {_timeout_of(exc, self.timeout_s)} (read timeout)"
        if isinstance(exc, urllib3.exceptions.ProtocolError):
            inner = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], BaseException) else None
            if isinstance(inner, TimeoutError):  # the server stopped taking the request body
                return False, f"no answer within {_timeout_of(inner, self.timeout_s)} (timed out sending the request)"
            return False, "connection lost: " + _lower_first(_reason(inner) if inner is not None else _reason(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return False, _lower_first(_reason(exc))
        return False, f"{type(exc).__name__}: {_reason(exc)}"

    def unavailable(self, exc: BaseException, waited_s: float) -> StorageUnavailable:
        reached, cause = self.cause(exc)
        what = "unavailable" if reached else "unreachable"
        if self.retry_s <= 0:
            return StorageUnavailable(f"storage {what} at {self.endpoint}: {cause} (not retried: "
                                      f"LONGSONG_STORAGE_RETRY_S=0)", waited_s, False)
        return StorageUnavailable(f"storage {what} at {self.endpoint}: {cause} (waited {_secs(waited_s)} s)",
                                  waited_s, True)

    def __call__(self, op: str, fn: Callable[[], T], key: str | None = None) -> T:
        began = time.monotonic()
        end = began + max(0.0, self.retry_s)
        delay = self.base_delay
        attempt = 0
        while True:
            attempt += 1
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
                now = time.monotonic()
                if now >= end:
                    raise self.unavailable(exc, now - began) from exc
                pause = min(delay * random.uniform(0.5, 1.0), end - now)
                delay = min(delay * 2, self.max_delay)
                reached, cause = self.cause(exc)
                log.warning("%s; retrying in %.1f s (attempt %d, waited %s of %s s)", message, pause, attempt,
                            _secs(now - began), _secs(self.retry_s))
                self._sleep(pause, began, f"storage {'unavailable' if reached else 'unreachable'} at "
                                          f"{self.endpoint}: {cause}; retrying S3 {op}")

    def _sleep(self, pause: float, began: float, message: str) -> None:
        """Sleep `pause` seconds, telling the waiting hook before and at least every WAIT_REPORT_S seconds."""
        wake = time.monotonic() + pause
        while True:
            now = time.monotonic()
            left = wake - now
            waiting(f"{message} in {_secs(max(0.0, left))} s (waited {_secs(now - began)} of {_secs(self.retry_s)} s)")
            if left <= 0:
                return
            time.sleep(min(WAIT_REPORT_S, left))


def _secs(seconds: float) -> str:
    """12.3 -> '12', 0.54 -> '0.5': whole seconds from 10 s on."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{round(seconds, 1):g}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) == 1 else text


def _timeout_of(exc: BaseException, configured: float | None) -> str:
    """'5 s' from urllib3's "... (read timeout=5)" / "(connect timeout=5)" messages, else the configured one."""
    m = re.search(r"timeout=([\d.]+)\)", str(exc))
    if m:
        return f"{float(m.group(1)):g} s"
    return f"{configured:g} s" if configured else "the timeout"


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
