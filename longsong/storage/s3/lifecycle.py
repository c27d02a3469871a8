"""Bucket preparation at worker start (`S3Storage.from_url`).

The bucket is checked and created when missing (private: no policy is ever set; a public bucket policy is
reported as a warning), and this prefix's lifecycle rules are set: scratch objects under {prefix}work/ expire
after LONGSONG_SCRATCH_EXPIRY_DAYS (covers songs that failed before cleanup), finished tracks under
{prefix}audio/ after LONGSONG_RETENTION_DAYS, stale multipart uploads after a day. Rules of other prefixes or
tools are kept. Each function takes the SDK client and the `Caller` of the bucket.
"""

from __future__ import annotations

import hashlib
import json
import logging

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule

from longsong.storage.base import StorageError, StorageUnavailable
from longsong.storage.s3.errors import Caller

log = logging.getLogger("longsong.storage.s3")

RULE_PREFIX = "longsong-"
_NO_LIFECYCLE_CODES = {"AccessDenied", "NotImplemented", "MethodNotAllowed", "XMinioNotImplemented"}


def ensure_bucket(client: Minio, call: Caller, region: str | None) -> None:
    """Create the bucket when missing; a clear StorageError when that is not allowed."""
    bucket = call.bucket
    if call("bucket check", lambda: client.bucket_exists(bucket)):
        return
    try:
        call("create bucket", lambda: client.make_bucket(bucket, location=region))
        log.info("created bucket %s at %s", bucket, call.endpoint)
    except StorageError as e:
        cause = e.__cause__
        code = getattr(cause, "code", "")
        if code in ("BucketAlreadyOwnedByYou",):  # another worker made it a moment ago
            return
        if code == "BucketAlreadyExists":
            raise StorageError(f"S3 storage: bucket name {bucket!r} is taken by another account; "
                               f"choose another bucket in LONGSONG_STORAGE") from cause
        raise StorageError(
            f"S3 storage: bucket {bucket!r} does not exist at {call.endpoint} and could not be created "
            f"({code or e}); create it first (e.g. `mc mb`), or use credentials allowed to create buckets"
        ) from cause


def _rule_id(kind: str, prefix: str) -> str:
    """Ours by name: 'longsong-{kind}:{prefix}' (hashed when the prefix is too long for an ID)."""
    rid = f"{RULE_PREFIX}{kind}:{prefix}"
    if len(rid) > 255:
        rid = f"{RULE_PREFIX}{kind}:{hashlib.sha256(prefix.encode()).hexdigest()[:32]}"
    return rid


def _wanted_rules(prefix: str, scratch_expiry_days: int | None, retention_days: int | None) -> dict[str, Rule]:
    p = prefix
    rules = {
        _rule_id("multipart", p): Rule(ENABLED, rule_filter=Filter(prefix=p), rule_id=_rule_id("multipart", p),
                                      abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(1)),
    }
    if scratch_expiry_days:
        rid = _rule_id("scratch", p)
        rules[rid] = Rule(ENABLED, rule_filter=Filter(prefix=f"{p}work/"), rule_id=rid,
                          expiration=Expiration(days=scratch_expiry_days))
    if retention_days:
        rid = _rule_id("retention", p)
        rules[rid] = Rule(ENABLED, rule_filter=Filter(prefix=f"{p}audio/"), rule_id=rid,
                          expiration=Expiration(days=retention_days))
    return rules


def _set_rules(client: Minio, call: Caller, rules: list[Rule]) -> None:
    if rules:
        call("set lifecycle", lambda: client.set_bucket_lifecycle(call.bucket, LifecycleConfig(rules)))
    else:
        call("delete lifecycle", lambda: client.delete_bucket_lifecycle(call.bucket))


def ensure_lifecycle(client: Minio, call: Caller, scratch_expiry_days: int | None,
                     retention_days: int | None) -> None:
    """Set this prefix's lifecycle rules (scratch expiry, retention, stale multipart uploads); keep others."""
    prefix = call.prefix
    ours = {_rule_id(kind, prefix) for kind in ("multipart", "scratch", "retention")}
    wanted = _wanted_rules(prefix, scratch_expiry_days, retention_days)
    mpu = _rule_id("multipart", prefix)
    core = {k: v for k, v in wanted.items() if k != mpu}
    try:
        current = call("read lifecycle", lambda: client.get_bucket_lifecycle(call.bucket))
        rules = list(current.rules) if current else []
        have = {r.rule_id: r for r in rules if r.rule_id in ours}
        if have in (wanted, core):
            return
        others = [r for r in rules if r.rule_id not in ours]
        try:
            _set_rules(client, call, others + list(wanted.values()))
        except StorageError:
            # MinIO does not implement AbortIncompleteMultipartUpload (it cleans stale uploads by itself).
            _set_rules(client, call, others + list(core.values()))
        log.info("lifecycle rules for %s: scratch expiry %s, retention %s", call.url,
                 f"{scratch_expiry_days} d" if scratch_expiry_days else "off",
                 f"{retention_days} d" if retention_days else "off")
    except StorageError as e:
        code = getattr(e.__cause__, "code", "")
        if code not in _NO_LIFECYCLE_CODES:
            raise
        if retention_days:
            raise StorageError(
                f"LONGSONG_RETENTION_DAYS={retention_days} needs a bucket lifecycle rule, but bucket "
                f"{call.bucket!r} refuses it ({code}); allow s3:PutLifecycleConfiguration or unset it") from e
        log.warning("could not set lifecycle rules on bucket %s (%s): scratch objects of failed songs under "
                    "%swork/ will not expire by themselves", call.bucket, code, prefix)


def warn_if_public(client: Minio, call: Caller) -> bool:
    """Log a warning when a bucket policy grants anonymous reads (longsong never sets one)."""
    try:
        text = call("read policy", lambda: client.get_bucket_policy(call.bucket))
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
                        call.bucket)
            return True
    return False
