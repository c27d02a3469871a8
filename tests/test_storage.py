"""Storage contract, run against both backends (filesystem and S3 on a loopback moto server), plus the S3
backend's own behaviour: settings, lifecycle rules, privacy, integrity checks, error mapping and
retries within the outage budget (tests/test_outage.py has the long outages). What moto does not check (secrets, presigned expiry) is tested on our code, with a tiny
fake S3 endpoint that answers what a test needs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import InvalidResponseError, S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from longsong.settings import Settings, SettingsError
from longsong.storage import COMMIT_MARKER, FileStorage, StorageError, StorageUnavailable, open_storage
from longsong.storage.s3 import S3Storage
from longsong.storage.s3.client import _digests, check_link_expiry
from longsong.storage.s3.errors import Caller
from longsong.storage.tracks import complete_tracks, incomplete_tracks, is_complete, track_keys
from s3_server import free_port, new_bucket_name, s3_env, s3_server  # noqa: F401  (fixtures)

MiB = 1024 * 1024


def s3_storage(env: dict[str, str], prefix: str = "pre/fix", **kw) -> S3Storage:
    return S3Storage.from_url(f"s3://{new_bucket_name()}/{prefix}", env=env, **kw)


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        return FileStorage(tmp_path / "objects")
    return s3_storage(request.getfixturevalue("s3_server"))


# ------------------------------------------------------------------------------------------ contract


def test_put_get_bytes(storage):
    data = os.urandom(100_000)
    info = storage.put_bytes("work/r1/seg-000.npy", data)
    assert info.key == "work/r1/seg-000.npy"
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.get_bytes("work/r1/seg-000.npy") == data


def test_put_get_file(storage, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(300_000))
    info = storage.put_file("audio/u1/r1/track.flac", src, content_type="audio/flac",
                            metadata={"request_id": "r1", "engine": "procedural", "model": "v1"})
    assert (info.size, info.sha256) == (src.stat().st_size, hashlib.sha256(src.read_bytes()).hexdigest())
    dest = tmp_path / "out" / "track.flac"
    dest.parent.mkdir()
    storage.get_file("audio/u1/r1/track.flac", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["track.flac"]  # no temporary files left behind


def test_empty_object(storage):
    info = storage.put_bytes("work/r1/empty", b"")
    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert storage.get_bytes("work/r1/empty") == b""


def test_exists_and_missing(storage, tmp_path):
    assert not storage.exists("work/r1/nope")
    storage.put_bytes("work/r1/yes", b"1")
    assert storage.exists("work/r1/yes")
    assert not storage.exists("work/r1/ye")
    with pytest.raises(FileNotFoundError):
        storage.get_file("work/r1/nope", tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("work/r1/nope")


def test_list_by_prefix(storage):
    for key in ["work/r1/a", "work/r1/b/c", "work/r10/a", "audio/u/r1/track.mp3"]:
        storage.put_bytes(key, b"x")
    assert storage.list("work/r1/") == ["work/r1/a", "work/r1/b/c"]
    assert storage.list("work/r1") == ["work/r1/a", "work/r1/b/c", "work/r10/a"]  # a string prefix
    assert storage.list("") == ["audio/u/r1/track.mp3", "work/r1/a", "work/r1/b/c", "work/r10/a"]
    assert storage.list("nothing/") == []


def test_delete_prefix(storage):
    for key in ["work/r1/a", "work/r1/b/c", "work/r10/a", "audio/u/r1/track.mp3"]:
        storage.put_bytes(key, b"x")
    assert storage.delete_prefix("work/r1/") == 2
    assert storage.list("") == ["audio/u/r1/track.mp3", "work/r10/a"]
    assert storage.delete_prefix("work/r1/") == 0
    assert storage.delete_prefix("nothing/") == 0


def test_overwrite_is_atomic(storage):
    """A reader racing a writer sees either the old or the new object, never a mix or a partial one."""
    size = 256 * 1024
    versions = [bytes([i]) * size for i in range(4)]
    storage.put_bytes("work/r1/seg", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def read():
        while not stop.is_set():
            try:
                seen.append(storage.get_bytes("work/r1/seg"))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(12):
            storage.put_bytes("work/r1/seg", versions[i % 4])
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors
    assert seen
    assert all(len(b) == size and b in versions for b in seen)
    assert storage.get_bytes("work/r1/seg") == versions[11 % 4]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "..", "a/.."])
def test_invalid_keys_rejected(storage, key):
    with pytest.raises(StorageError, match="invalid object key"):
        storage.put_bytes(key, b"x")
    with pytest.raises(StorageError):
        storage.exists(key)
    with pytest.raises(StorageError):
        storage.get_bytes(key)
    with pytest.raises(StorageError):
        storage.link(key)


def test_link_downloads(storage):
    data = b"ID3 fake mp3 " * 1000
    storage.put_bytes("audio/u1/r1/track.mp3", data, content_type="audio/mpeg")
    url = storage.link("audio/u1/r1/track.mp3")
    if isinstance(storage, FileStorage):
        assert url.startswith("file://")
    else:
        assert url.startswith("http://") and "X-Amz-Signature=" in url and "X-Amz-Expires=86400" in url
        assert "X-Amz-Expires=3600" in storage.link("audio/u1/r1/track.mp3", timedelta(hours=1))
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == data


def test_metadata_json_last_makes_track_complete(storage):
    folder = "audio/u1/r1/"
    storage.put_bytes(folder + "track.mp3", b"mp3")
    storage.put_bytes(folder + "track.flac", b"flac")
    storage.put_bytes("audio/u1/r0/track.mp3", b"abandoned")
    assert not is_complete(storage, folder)
    assert complete_tracks(storage) == []
    assert track_keys(storage, folder) == []
    storage.put_bytes(folder + COMMIT_MARKER, json.dumps({"request_id": "r1"}).encode(),
                      content_type="application/json")
    storage.put_bytes("audio/u2/r9/track.mp3", b"mp3")
    storage.put_bytes("audio/u2/r9/" + COMMIT_MARKER, b"{}")
    assert is_complete(storage, folder) and is_complete(storage, "audio/u1/r1")
    assert complete_tracks(storage) == ["audio/u1/r1/", "audio/u2/r9/"]
    assert complete_tracks(storage, "audio/u1/") == ["audio/u1/r1/"]
    assert incomplete_tracks(storage) == ["audio/u1/r0/"]
    assert track_keys(storage, folder) == [folder + COMMIT_MARKER, folder + "track.flac", folder + "track.mp3"]


# ------------------------------------------------------------------------------------------ S3 specifics


def test_open_storage_dispatches_s3(s3_env, monkeypatch):
    bucket = new_bucket_name()
    monkeypatch.setenv("LONGSONG_STORAGE", f"s3://{bucket}/longsong")
    st = open_storage()
    assert isinstance(st, S3Storage)
    assert st.url == f"s3://{bucket}/longsong/"
    st.put_bytes("work/x", b"1")
    assert Minio(st.host, s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"], secure=False,
                 region="us-east-1").stat_object(bucket, "longsong/work/x").size == 1


def test_s3_metadata_and_content_types(s3_server, tmp_path):
    st = s3_storage(s3_server)
    st.put_bytes("audio/u/r/track.mp3", b"x", metadata={"request_id": "r-1", "engine": "musicgen",
                                                      "model": "facebook/musicgen-small", "note": "café"})
    meta = st.object_metadata("audio/u/r/track.mp3")
    assert meta["content-type"] == "audio/mpeg"  # guessed from the extension
    assert meta["request-id"] == "r-1" and meta["engine"] == "musicgen"
    assert meta["model"] == "facebook/musicgen-small"
    assert meta["note"] == "caf%C3%A9"  # headers are ASCII: non-ASCII values are percent-encoded
    assert meta["sha256"] == hashlib.sha256(b"x").hexdigest()
    st.put_bytes("audio/u/r/metadata.json", b"{}")
    assert st.object_metadata("audio/u/r/metadata.json")["content-type"] == "application/json"
    st.put_bytes("audio/u/r/track.flac", b"x", content_type="audio/x-flac")  # an explicit type wins
    assert st.object_metadata("audio/u/r/track.flac")["content-type"] == "audio/x-flac"


def test_s3_multipart_upload_verified(s3_server, tmp_path):
    st = s3_storage(s3_server, part_size=5 * MiB)
    src = tmp_path / "big.wav"
    src.write_bytes(os.urandom(11 * MiB))
    info = st.put_file("audio/u/r/track.wav", src)
    sha, etag, size = _digests(src, 5 * MiB)
    assert etag.endswith("-3")  # three parts
    assert (info.sha256, info.size) == (sha, size)
    client = st._client
    assert client.stat_object(st.bucket, "pre/fix/audio/u/r/track.wav").etag == etag
    out = tmp_path / "back.wav"
    st.get_file("audio/u/r/track.wav", out)
    assert out.read_bytes() == src.read_bytes()


def test_s3_bucket_created_private(s3_server):
    st = s3_storage(s3_server)
    st.put_bytes("audio/u/r/track.mp3", b"secret")
    with pytest.raises(urllib.error.HTTPError) as e:  # anonymous GET, no signature
        urllib.request.urlopen(f"{st.endpoint}/{st.bucket}/pre/fix/audio/u/r/track.mp3", timeout=10)
    assert e.value.code == 403
    assert st.warn_if_public() is False


def test_s3_public_bucket_policy_warns(s3_server, caplog):
    bucket = new_bucket_name()
    client = Minio(urlparse(s3_server["AWS_ENDPOINT_URL_S3"]).netloc, s3_server["AWS_ACCESS_KEY_ID"],
                   s3_server["AWS_SECRET_ACCESS_KEY"], secure=False, region="us-east-1")
    client.make_bucket(bucket)
    client.set_bucket_policy(bucket, json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}))
    with caplog.at_level(logging.WARNING, logger="longsong.storage.s3"):
        S3Storage.from_url(f"s3://{bucket}/x", env=s3_server)
    assert "lets anyone read" in caplog.text


def test_s3_lifecycle_rules(s3_server):
    bucket = new_bucket_name()
    env = dict(s3_server, LONGSONG_RETENTION_DAYS="30", LONGSONG_SCRATCH_EXPIRY_DAYS="3")
    st = S3Storage.from_url(f"s3://{bucket}/prod", Settings.from_env(env), env=env)
    client = st._client

    def rules():
        return {r.rule_id: r for r in client.get_bucket_lifecycle(bucket).rules}

    got = rules()
    scratch, retention = got["longsong-scratch:prod/"], got["longsong-retention:prod/"]
    assert (scratch.rule_filter.prefix, scratch.expiration.days) == ("prod/work/", 3)
    assert (retention.rule_filter.prefix, retention.expiration.days) == ("prod/audio/", 30)
    assert got["longsong-multipart:prod/"].abort_incomplete_multipart_upload.days_after_initiation == 1
    # Someone else's rule and another prefix's rules survive; turning retention off removes ours.
    foreign = Rule(ENABLED, rule_filter=Filter(prefix="logs/"), rule_id="ops-logs", expiration=Expiration(days=9))
    client.set_bucket_lifecycle(bucket, LifecycleConfig(list(got.values()) + [foreign]))
    S3Storage.from_url(f"s3://{bucket}/staging", env=s3_server)
    S3Storage.from_url(f"s3://{bucket}/prod", env=s3_server)  # defaults: scratch 2 days, retention off
    got = rules()
    assert "longsong-retention:prod/" not in got
    assert got["longsong-scratch:prod/"].expiration.days == 2
    assert got["longsong-scratch:staging/"].rule_filter.prefix == "staging/work/"
    assert got["ops-logs"].expiration.days == 9
    S3Storage.from_url(f"s3://{bucket}/prod", Settings.from_env({"LONGSONG_SCRATCH_EXPIRY_DAYS": "off"}),
                       env=s3_server)
    assert "longsong-scratch:prod/" not in rules()


def test_s3_link_settings(s3_server):
    st = s3_storage(s3_server, prefix="", link_endpoint="https://media.example.com")
    st.put_bytes("audio/u/r/track.mp3", b"x")
    url = st.link("audio/u/r/track.mp3", timedelta(days=7))
    assert url.startswith(f"https://media.example.com/{st.bucket}/audio/u/r/track.mp3?")
    assert "X-Amz-Expires=604800" in url
    with pytest.raises(StorageError, match="7 days"):
        st.link("audio/u/r/track.mp3", timedelta(days=7, seconds=1))
    no_region = {k: v for k, v in s3_server.items() if k != "AWS_REGION"}
    st3 = S3Storage.from_url(f"s3://{st.bucket}", Settings.from_env({"LONGSONG_LINK_ENDPOINT": "http://cdn.local"}),
                             env=no_region)
    assert "%2Fus-east-1%2Fs3%2F" in st3.link("audio/u/r/track.mp3")  # region asked from the bucket
    st2 = S3Storage.from_url(f"s3://{st.bucket}", Settings.from_env({"LONGSONG_LINK_EXPIRY": "90m"}), env=s3_server)
    assert "X-Amz-Expires=5400" in st2.link("audio/u/r/track.mp3")
    with pytest.raises(SettingsError, match="LONGSONG_LINK_EXPIRY.*7 days"):
        S3Storage.from_url(f"s3://{st.bucket}", Settings.from_env({"LONGSONG_LINK_EXPIRY": "8d"}), env=s3_server)


def test_link_region_from_the_bucket(s3_server):
    """Without AWS_REGION, links for LONGSONG_LINK_ENDPOINT are signed for the region the bucket reports."""
    bucket = new_bucket_name()
    Minio(urlparse(s3_server["AWS_ENDPOINT_URL_S3"]).netloc, s3_server["AWS_ACCESS_KEY_ID"],
          s3_server["AWS_SECRET_ACCESS_KEY"], secure=False, region="eu-west-1").make_bucket(bucket, "eu-west-1")
    no_region = {k: v for k, v in s3_server.items() if k != "AWS_REGION"}
    st = S3Storage.from_url(f"s3://{bucket}", Settings(link_endpoint="http://cdn.local"), env=no_region, init=False)
    url = st.link("audio/u/r/track.mp3")
    assert url.startswith(f"http://cdn.local/{bucket}/audio/u/r/track.mp3?") and "%2Feu-west-1%2Fs3%2F" in url


def test_link_region_fallback_and_errors(fake_s3):
    """No x-amz-bucket-region header (MinIO without a region) means us-east-1; the answer is kept."""
    fake = fake_s3(lambda m, p, q: (200, {}, b""))
    st = fake.storage(region=None, link_endpoint="https://media.example.com")
    assert "%2Fus-east-1%2Fs3%2F" in st.link("audio/u/r/track.mp3")
    st.link("audio/u/r/track.flac")
    assert fake.requests == [("HEAD", "/bucket", {})]
    fake.respond = lambda m, p, q: (200, {"x-amz-bucket-region": "eu-central-1"}, b"")
    assert "%2Feu-central-1%2Fs3%2F" in fake.storage(region=None, link_endpoint="https://media.example.com").link("a")
    fake.respond = lambda m, p, q: (404, {}, b"")
    with pytest.raises(StorageError, match="bucket 'bucket' does not exist"):
        fake.storage(region=None, link_endpoint="https://media.example.com").link("a")
    fake.respond = lambda m, p, q: (503, {}, b"")
    with pytest.raises(StorageUnavailable, match=r"storage unavailable at http://127\.0\.0\.1:\d+: server error 503 "
                                                 r"\(waited 0(\.\d)? s\)$"):
        fake.storage(region=None, link_endpoint="https://media.example.com").link("a")


def test_check_link_expiry_limit():
    assert check_link_expiry(timedelta(days=7)) == timedelta(days=7)
    with pytest.raises(StorageError, match="7 days"):
        check_link_expiry(timedelta(days=7, seconds=1))


GOOD_ENV = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_REGION": "us-east-1"}


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3://Bad_Bucket/x", "s3://ab/x", "s3://user:pw@bucket/x",
                                 "s3://bucket:9000/x", "s3://bucket/a//b", "s3://bucket/../x",
                                 "s3://bucket/x?region=eu", "s3://192.168.1.1/x", "s3://bucket-/x"])
def test_bad_storage_urls(url):
    with pytest.raises(StorageError) as e:
        S3Storage.from_url(url, env=GOOD_ENV)
    assert "\n" not in str(e.value) and "LONGSONG_STORAGE" in str(e.value)


@pytest.mark.parametrize("change,error,match", [
    ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, StorageError, "no credentials"),
    ({"AWS_SECRET_ACCESS_KEY": None}, StorageError, "only one is set"),
    ({"AWS_ENDPOINT_URL_S3": "ftp://minio:9000"}, StorageError, "AWS_ENDPOINT_URL_S3"),
    ({"AWS_ENDPOINT_URL_S3": "http://minio:9000/path"}, StorageError, "AWS_ENDPOINT_URL_S3"),
    ({"AWS_ENDPOINT_URL_S3": "http://minio:port"}, StorageError, "AWS_ENDPOINT_URL_S3"),
    ({"LONGSONG_RETENTION_DAYS": "forever"}, SettingsError, "LONGSONG_RETENTION_DAYS"),
    ({"LONGSONG_SCRATCH_EXPIRY_DAYS": "-2"}, SettingsError, "LONGSONG_SCRATCH_EXPIRY_DAYS"),
    ({"LONGSONG_LINK_EXPIRY": "30d"}, SettingsError, "LONGSONG_LINK_EXPIRY"),
    ({"LONGSONG_LINK_ENDPOINT": "cdn://x"}, StorageError, "LONGSONG_LINK_ENDPOINT"),
])
def test_bad_settings(change, error, match):
    env = {k: v for k, v in {**GOOD_ENV, **change}.items() if v is not None}
    with pytest.raises(error, match=match) as e:
        S3Storage.from_url("s3://bucket/x", Settings.from_env(env), env=env)
    assert "\n" not in str(e.value)


def test_settings_parsed_without_network():
    env = {**GOOD_ENV, "AWS_ENDPOINT_URL_S3": "https://s3.local:8443", "LONGSONG_RETENTION_DAYS": "30d"}
    st = S3Storage.from_url("s3://my.bucket-1/a/b/", Settings.from_env(env), env=env, init=False)
    assert (st.bucket, st.prefix, st.url) == ("my.bucket-1", "a/b/", "s3://my.bucket-1/a/b/")
    assert (st.host, st.secure, st.retention_days, st.scratch_expiry_days) == ("s3.local:8443", True, 30, 2)
    assert st.link_expiry == timedelta(hours=24)
    plain = S3Storage.from_url("s3://bucket", env=GOOD_ENV, init=False)
    assert (plain.prefix, plain.secure) == ("", False)


def test_outage_budget_and_request_timeout_come_from_settings():
    st = S3Storage.from_url("s3://bucket/x", Settings(storage_retry_s=42, storage_timeout_s=7), env=GOOD_ENV,
                            init=False)
    assert (st.retry_s, st.timeout_s, st._call.retry_s) == (42, 7, 42)
    timeout = st._http.connection_pool_kw["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (7, 7)
    default = S3Storage.from_url("s3://bucket/x", env=GOOD_ENV, init=False)
    assert (default.retry_s, default.timeout_s) == (Settings.storage_retry_s, Settings.storage_timeout_s) == (300, 20)


def test_a_silent_server_times_out_each_request(fake_s3):
    """A server that takes a connection but never answers: each request ends after the request timeout."""
    def respond(method, path, query):
        time.sleep(1.5)
        return 200, {}, b""

    fake = fake_s3(respond)
    began = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        fake.storage(retry_s=0, timeout_s=0.3).list("")
    assert time.monotonic() - began < 1.2
    assert re.fullmatch(r"storage unreachable at http://127\.0\.0\.1:\d+: no answer within 0\.3 s \(read timeout\) "
                        r"\(not retried: LONGSONG_STORAGE_RETRY_S=0\)", str(e.value)), str(e.value)


def test_s3_put_bytes_needs_no_temporary_file(s3_server, monkeypatch):
    """Bytes go up from memory, multipart too: nothing written to disk, not even under the data dir."""
    from longsong.storage import base

    def no_temp(*a, **kw):
        raise AssertionError("a temporary file was made")

    monkeypatch.setattr(base, "temp_dir", no_temp)
    st = s3_storage(s3_server, part_size=5 * MiB)
    data = os.urandom(11 * MiB)
    info = st.put_bytes("work/r/big.npy", data)
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert st.get_bytes("work/r/big.npy") == data


def test_open_storage_s3_errors_are_storage_errors(monkeypatch):
    for name in GOOD_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match="no credentials"):
        open_storage("s3://bucket/x")


# ------------------------------------------------------------------------------------------ error mapping


def _s3_error(code: str, status: int) -> S3Error:
    return S3Error(SimpleNamespace(status=status), code, f"{code} message", "/b/k", "req", "host", "b", "k")


@pytest.mark.parametrize("code,status,kind", [
    ("AccessDenied", 403, StorageError), ("NoSuchBucket", 404, StorageError),
    ("InvalidAccessKeyId", 403, StorageError), ("SignatureDoesNotMatch", 403, StorageError),
    ("InvalidArgument", 400, StorageError), ("NoSuchKey", 404, FileNotFoundError),
    ("SlowDown", 503, StorageUnavailable), ("InternalError", 500, StorageUnavailable),
    ("ServiceUnavailable", 503, StorageUnavailable), ("SomethingNew", 502, StorageUnavailable),
    ("NotImplemented", 501, StorageError),
])
def test_s3_error_mapping(code, status, kind):
    st = S3Storage("bucket", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s", region="us-east-1",
                   retry_s=0.05, retry_base_delay=0.001, init=False)
    calls = []

    def fail():
        calls.append(1)
        raise _s3_error(code, status)

    with pytest.raises(kind) as e:
        st._call("stat", fail, key="k")
    assert not isinstance(e.value, StorageUnavailable) or kind is StorageUnavailable
    if kind is StorageUnavailable:  # only transient errors are retried (until the budget is spent)
        assert len(calls) > 1 and e.value.budget_exhausted and re.search(r"\(waited 0(\.\d)? s\)$", str(e.value))
    else:
        assert len(calls) == 1
    assert "\n" not in str(e.value)


def test_non_s3_answer_status_from_the_sdk_message():
    """minio keeps a non-XML answer's HTTP status private; its message carries it: pinned to the installed SDK."""
    call = Caller("bucket", "", "http://127.0.0.1:9")
    kind, message = call.describe(InvalidResponseError(503, "text/html", "x"), "list", None)
    assert (kind, "HTTP 503" in message) == ("transient", True)
    kind, message = call.describe(InvalidResponseError(404, "text/html", "x"), "list", None)
    assert (kind, "HTTP 404" in message) == ("permanent", True)


def test_unknown_exceptions_pass_through():
    """Cancellation and other foreign exceptions are neither retried nor wrapped."""
    st = S3Storage("bucket", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s", init=False)

    class Cancelled(Exception):
        pass

    calls = []

    def fail():
        calls.append(1)
        raise Cancelled()

    with pytest.raises(Cancelled):
        st._call("upload", fail)
    assert calls == [1]


class FakeS3:
    """A loopback HTTP server answering S3 requests with whatever `respond(method, path, query)` returns:
    (status, headers, body). Records every request."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[str, str, dict]] = []
        self.bodies: list[bytes] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                received = self.rfile.read(length) if length else b""
                u = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
                fake.requests.append((self.command, u.path, query))
                fake.bodies.append(received)
                status, headers, body = fake.respond(self.command, u.path, query)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def storage(self, init=False, **kw) -> S3Storage:
        opts = dict(endpoint=self.endpoint, access_key="k", secret_key="s", region="us-east-1", retry_s=0.2,
                    retry_base_delay=0.01, init=init)
        opts.update(kw)
        return S3Storage("bucket", "p", **opts)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def xml_error(status: int, code: str):
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code} here</Message>'
            f'<Resource>/bucket</Resource><RequestId>1</RequestId><HostId>h</HostId></Error>').encode()
    return status, {"Content-Type": "application/xml"}, body


@pytest.fixture
def fake_s3():
    servers = []

    def make(respond):
        servers.append(FakeS3(respond))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_access_denied_at_start_is_not_retried(fake_s3):
    fake = fake_s3(lambda m, p, q: xml_error(403, "AccessDenied"))
    with pytest.raises(StorageError, match="access denied.*AWS_ACCESS_KEY_ID"):
        fake.storage(init=True)
    assert len(fake.requests) == 1


def test_wrong_secret_and_unknown_key(fake_s3):
    fake = fake_s3(lambda m, p, q: xml_error(403, "SignatureDoesNotMatch"))
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY does not match"):
        fake.storage().list("")
    fake.respond = lambda m, p, q: xml_error(403, "InvalidAccessKeyId")
    with pytest.raises(StorageError, match="rejects the credentials"):
        fake.storage().put_bytes("work/x", b"1")


def test_missing_bucket_without_permission_to_create(fake_s3):
    def respond(method, path, query):
        if method == "HEAD" and path == "/bucket":
            return 404, {}, b""
        return xml_error(403, "AccessDenied")

    fake = fake_s3(respond)
    with pytest.raises(StorageError, match="does not exist.*could not be created") as e:
        fake.storage(init=True)
    assert "\n" not in str(e.value)
    assert [r[0] for r in fake.requests] == ["HEAD", "PUT"]


def test_no_such_bucket_later(fake_s3):
    fake = fake_s3(lambda m, p, q: xml_error(404, "NoSuchBucket"))
    with pytest.raises(StorageError, match="bucket 'bucket' does not exist"):
        fake.storage().list("work/")


def test_lifecycle_refused(fake_s3, caplog):
    def respond(method, path, query):
        if "lifecycle" in query:
            return xml_error(403, "AccessDenied")
        if "policy" in query:
            return xml_error(404, "NoSuchBucketPolicy")
        return 200, {}, b""

    fake = fake_s3(respond)
    with caplog.at_level(logging.WARNING, logger="longsong.storage.s3"):
        fake.storage(init=True)  # scratch expiry only: a warning, the worker still starts
    assert "will not expire" in caplog.text
    with pytest.raises(StorageError, match="LONGSONG_RETENTION_DAYS=30"):
        fake.storage(init=True, retention_days=30)


def test_lifecycle_without_multipart_rule_support(fake_s3):
    """MinIO rejects AbortIncompleteMultipartUpload: the scratch/retention rules are set without it."""
    def respond(method, path, query):
        if "lifecycle" in query and method == "GET":
            return xml_error(404, "NoSuchLifecycleConfiguration")
        if "lifecycle" in query and method == "PUT":
            if b"AbortIncompleteMultipartUpload" in fake.bodies[-1]:
                return xml_error(501, "NotImplemented")
            return 200, {}, b""
        if "policy" in query:
            return xml_error(404, "NoSuchBucketPolicy")
        return 200, {}, b""

    fake = fake_s3(respond)
    fake.storage(init=True, retention_days=30)
    puts = [b for (m, _, q), b in zip(fake.requests, fake.bodies) if m == "PUT" and "lifecycle" in q]
    assert len(puts) == 2 and b"<Days>30</Days>" in puts[1] and b"AbortIncomplete" not in puts[1]


def test_transient_errors_give_up_when_the_budget_is_spent(fake_s3):
    fake = fake_s3(lambda m, p, q: xml_error(503, "SlowDown"))
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"^storage unavailable at http://127\.0\.0\.1:\d+: SlowDown: "
                                                 r"SlowDown here \(waited [0-2](\.\d)? s\)$") as e:
        fake.storage(retry_s=0.5).list("")
    assert 0.5 <= time.monotonic() - began < 3 and 0.5 <= e.value.waited_s < 3
    assert len(fake.requests) >= 3  # retried with backoff until the budget, not a fixed number of times


def test_transient_errors_retried_then_succeed(fake_s3):
    def respond(method, path, query):
        if len(fake.requests) <= 2:
            return 503, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"
        return 200, {"Content-Length": "1", "ETag": '"x"'}, b""

    fake = fake_s3(respond)
    assert fake.storage().exists("work/x") is True
    assert len(fake.requests) == 3


def test_upload_etag_mismatch_is_detected(fake_s3):
    fake = fake_s3(lambda m, p, q: (200, {"ETag": '"' + "0" * 32 + '"'}, b""))
    with pytest.raises(StorageUnavailable, match="ETag"):
        fake.storage().put_bytes("work/x", b"payload")
    assert len(fake.requests) >= 2 and {r[0] for r in fake.requests} == {"PUT"}
    fake.respond = lambda m, p, q: (200, {"ETag": '"' + hashlib.md5(b"payload").hexdigest() + '"'}, b"")
    assert fake.storage().put_bytes("work/x", b"payload").size == 7


def test_download_checksum_mismatch_is_detected(fake_s3, tmp_path):
    fake = fake_s3(lambda m, p, q: (200, {"x-amz-meta-sha256": hashlib.sha256(b"other").hexdigest(),
                                          "Content-Type": "application/octet-stream"}, b"payload"))
    with pytest.raises(StorageUnavailable, match="sha256"):
        fake.storage().get_file("work/x", tmp_path / "x")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    with pytest.raises(StorageUnavailable, match="sha256"):
        fake.storage().get_bytes("work/x")


def test_not_an_s3_endpoint(fake_s3):
    fake = fake_s3(lambda m, p, q: (404, {"Content-Type": "text/html"}, b"<html>not found</html>"))
    with pytest.raises(StorageError, match="not an S3 endpoint|S3 endpoint"):
        fake.storage().list("")


def test_connection_refused_is_unavailable():
    port = free_port()
    env = {**GOOD_ENV, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    with pytest.raises(StorageUnavailable) as e:
        S3Storage.from_url("s3://bucket/x", env=env, retry_s=0.3, retry_base_delay=0.05)
    assert re.fullmatch(rf"storage unreachable at http://127\.0\.0\.1:{port}: connection refused \(waited 0(\.\d)? s\)",
                        str(e.value)), str(e.value)
    st = S3Storage.from_url("s3://bucket/x", env=env, init=False, retry_s=0)
    with pytest.raises(StorageUnavailable, match="not retried") as e:
        st.exists("work/x")
    assert not e.value.budget_exhausted  # no budget: the activity's own retries are the only ones
    assert not issubclass(StorageUnavailable, StorageError)  # different types: retryable vs not


def test_tls_to_a_plain_http_endpoint_is_a_clear_error(fake_s3):
    fake = fake_s3(lambda m, p, q: (200, {}, b""))
    st = S3Storage("bucket", endpoint=fake.endpoint.replace("http://", "https://"), access_key="k",
                   secret_key="s", region="us-east-1", init=False, retry_s=0.2, retry_base_delay=0.01)
    with pytest.raises(StorageError, match="TLS failure.*http:// endpoint means no TLS"):
        st.list("")


def test_clock_skew_is_not_retried():
    st = S3Storage("bucket", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s", init=False)

    def fail():
        raise _s3_error("RequestTimeTooSkewed", 403)

    with pytest.raises(StorageError, match="clock"):
        st._call("list", fail)
