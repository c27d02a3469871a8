"""Webhooks: the callback URL policy (SSRF guard), signatures, and real deliveries to a local receiver, alone and
through the WebhookWorkflow on the real dev server (retries on 5xx, none on 4xx or a refused address).
No test resolves a public host name (no internet here): public addresses are IP literals."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker

from longsong import __version__
from longsong.activities.notify import NotifyActivities
from longsong.devstack import free_port
from longsong.request import InvalidRequest
from longsong.request import check_callback_syntax
from longsong.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookRejected,
    WebhookUnreachable,
    check_url,
    deliver,
    encode_event,
    key_secret,
    sign,
    verify,
)
from longsong.workflows.notify import WebhookJob, WebhookResult, WebhookWorkflow, song_event

MASTER = "test-master-secret"
EVENT = song_event("song.completed", "song-1", "alice", "done", "2026-01-02T03:04:05+00:00", duration_s=180.0,
                   files={"mp3": "tracks/song-1/track.mp3", "wav": "tracks/song-1/track.wav"})

# ---------------------------------------------------------------------------------------------- URL policy


@pytest.mark.parametrize("url", ["https://93.184.216.34/hook", "https://93.184.216.34:8443/a?b=c",
                                 "https://[2606:4700::1111]/hook", "HTTPS://8.8.8.8"])
def test_https_to_public_addresses_is_allowed(url):
    assert check_url(url, allow_private=False) == url


@pytest.mark.parametrize("url, why", [
    ("http://93.184.216.34/hook", "scheme 'http' is not https"),
    ("https://127.0.0.1/hook", "loopback"),
    ("https://127.1.2.3:8443/hook", "loopback"),
    ("https://[::1]/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://172.16.0.1/hook", "private"),
    ("https://172.31.255.254/hook", "private"),
    ("https://192.168.1.1/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://100.64.0.1/hook", "CGNAT"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("https://[::ffff:10.0.0.1]/hook", "private (IPv4 10.0.0.1 inside IPv6)"),
    ("https://[2002:7f00:1::]/hook", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[fc00::1]/hook", "private"),
    ("https://[ff02::1]/hook", "multicast"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://240.0.0.1/hook", "private"),
    ("https://localhost/hook", "host 'localhost' resolves to 127.0.0.1, a loopback address"),
    ("https://2130706433/hook", "resolves to 127.0.0.1"),  # 127.0.0.1 written as one number
    ("https://user:pass@93.184.216.34/hook", "credentials"),
    ("https://user@93.184.216.34/hook", "credentials"),
    ("ftp://93.184.216.34/hook", "scheme 'ftp' is not https"),
    ("/v1/hook", "not an absolute URL"),
    ("93.184.216.34/hook", "not an absolute URL"),
    ("https:///hook", "no host"),
    ("https://[::1/hook", "not a well-formed URL"),
    ("https://93.184.216.34:99999/hook", "port"),
    ("https://93.184.216.34/a b", "whitespace"),
    ("https://93.184.216.34/\r\nX-Injected: 1", "control characters"),
    ("https://93.184.216.34/" + "a" * 1980, "2002 characters, over 2000"),
    ("", "missing"),
])
def test_refused_urls_name_the_field_and_the_reason_in_one_line(url, why):
    with pytest.raises(InvalidRequest) as e:
        check_url(url, allow_private=False)
    message = str(e.value)
    assert e.value.field == "callback_url" and message.startswith("callback_url: ")
    assert why in message and "must be an absolute https URL" in message and "\n" not in message


def test_allow_private_lets_http_and_loopback_through_but_not_malformed_urls():
    for url in ("http://127.0.0.1:8000/hook", "http://localhost:8000/hook", "https://10.0.0.1/hook",
                "http://[::1]:8000/hook", "http://169.254.169.254/"):
        assert check_url(url, allow_private=True) == url
    for url in ("ftp://127.0.0.1/", "http://a:b@127.0.0.1/", "/hook", "http://127.0.0.1/" + "a" * 2000):
        with pytest.raises(InvalidRequest):
            check_url(url, allow_private=True)


def test_without_resolving_names_pass_but_literals_are_still_judged():
    assert check_url("https://hooks.example.com/x", allow_private=False, resolve=False)
    with pytest.raises(InvalidRequest, match="private"):
        check_url("https://10.0.0.1/x", allow_private=False, resolve=False)
    with pytest.raises(InvalidRequest, match="not https"):
        check_url("http://hooks.example.com/x", allow_private=False, resolve=False)
    # the syntax check (workflow code) applies no policy
    assert check_callback_syntax("http://127.0.0.1:9/x") == "http://127.0.0.1:9/x"
    with pytest.raises(InvalidRequest, match="credentials"):
        check_callback_syntax("https://u:p@hooks.example.com/")


# ---------------------------------------------------------------------------------------------- signatures


def test_signature_roundtrip_tampering_and_replay():
    secret, body = key_secret(MASTER, "key-1"), encode_event(EVENT)
    header = sign(secret, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify(secret, header, body, now=1_700_000_100)
    assert not verify(secret, header, body + b" ", now=1_700_000_100)  # tampered body
    assert not verify(secret, header, body.replace(b"done", b"fail"), now=1_700_000_100)
    assert not verify(key_secret(MASTER, "key-2"), header, body, now=1_700_000_100)  # another key's secret
    assert not verify(secret, header, body, now=1_700_000_301)  # older than the 300 s tolerance: a replay
    assert verify(secret, header, body, tolerance_s=600, now=1_700_000_301)
    forged_time = header.replace("t=1700000000", "t=1700000300")
    assert not verify(secret, forged_time, body, now=1_700_000_300)  # the timestamp is signed too
    for garbage in ("", "v1=abc", "t=x,v1=abc", "t=1700000000", f"t=1,t=2,{header.split(',')[1]}"):
        assert not verify(secret, garbage, body, now=1_700_000_000)
    rotated = f"t=1700000000,v1={'0' * 64},{header.split(',')[1]}"
    assert verify(secret, rotated, body, now=1_700_000_000)  # any v1 may match


def test_key_secrets_are_per_key_derived_and_keyless_songs_use_the_empty_key():
    assert key_secret(MASTER, "key-1") == key_secret(MASTER, "key-1") != key_secret(MASTER, "key-2")
    assert key_secret(MASTER, None) == key_secret(MASTER, "") != key_secret(MASTER, "key-1")
    assert key_secret("other-master", "key-1") != key_secret(MASTER, "key-1")
    assert len(key_secret(MASTER, "key-1")) == 64 and MASTER not in key_secret(MASTER, "key-1")


def test_song_event_shape():
    assert EVENT == {"id": "song-1-song.completed", "type": "song.completed", "created_at": "2026-01-02T03:04:05+00:00",
                     "song": {"id": "song-1", "user_id": "alice", "status": "done", "duration_s": 180.0,
                              "links": {"self": "/v1/songs/song-1",
                                        "files": {"mp3": "/v1/songs/song-1/files/track.mp3",
                                                  "wav": "/v1/songs/song-1/files/track.wav"}}}}
    failed = song_event("song.failed", "s2", "bob", "failed", "t", error="the gate refused window 3")
    assert failed["song"]["error"] == "the gate refused window 3" and "duration_s" not in failed["song"]
    assert failed["song"]["links"]["files"] == {}
    with pytest.raises(ValueError, match="song.completed, song.failed, song.cancelled"):
        song_event("song.done", "s", "u", "done", "t")


# ---------------------------------------------------------------------------------------------- a real receiver


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 answering `statuses` in turn (the last one repeats); records each request."""

    statuses: list[int]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hooks/longsong?x=1"


@pytest.fixture
def receiver():
    rec = Receiver(statuses=[200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec.requests.append((dict(self.headers.items()), body))
            status = rec.statuses.pop(0) if len(rec.statuses) > 1 else rec.statuses[0]
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def test_a_delivery_is_signed_with_the_keys_secret_and_keeps_the_host_header(receiver):
    # The host name is resolved once, checked, and the connection pinned to that address: the receiver still
    # sees the name in Host.
    status = deliver(receiver.url("localhost"), EVENT, key_secret(MASTER, "key-1"), allow_private=True)
    assert status == 200 and len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert json.loads(body) == EVENT and body == encode_event(EVENT)
    assert verify(key_secret(MASTER, "key-1"), headers[SIGNATURE_HEADER], body)
    assert not verify(key_secret(MASTER, "key-2"), headers[SIGNATURE_HEADER], body)
    assert headers["Host"] == f"localhost:{receiver.port}"
    assert headers[EVENT_ID_HEADER] == "song-1-song.completed"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"longsong-webhooks/{__version__}"


@pytest.mark.parametrize("status, error, words", [
    (302, WebhookRejected, "302, a redirect"),
    (404, WebhookRejected, "404, not retried"),
    (410, WebhookRejected, "410, not retried"),
    (408, WebhookUnreachable, "408, will retry"),
    (429, WebhookUnreachable, "429, will retry"),
    (503, WebhookUnreachable, "503, will retry"),
])
def test_answers_are_classified_permanent_or_transient(receiver, status, error, words):
    receiver.statuses = [status]
    with pytest.raises(error) as e:
        deliver(receiver.url(), EVENT, "s", allow_private=True)
    assert str(e.value).startswith(f"webhook to 127.0.0.1: answered {status}, ")
    assert words in str(e.value) and len(receiver.requests) == 1  # a redirect is not followed


def test_a_closed_port_is_transient():
    with pytest.raises(WebhookUnreachable, match=r"webhook to 127.0.0.1: cannot connect to 127.0.0.1 .*will retry"):
        deliver(f"http://127.0.0.1:{free_port()}/hook", EVENT, "s", allow_private=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_receiver_is_refused_before_any_request_without_allow_private(receiver, host):
    for url in (receiver.url(host), receiver.url(host).replace("http://", "https://")):
        with pytest.raises(WebhookRejected, match=f"webhook to {host}: callback_url: .*(not https|loopback)"):
            deliver(url, EVENT, "s", allow_private=False)
    assert receiver.requests == []


# ---------------------------------------------------------------------------------------------- the workflow


def run_job(address: str, settings, job: WebhookJob) -> WebhookResult:
    """Run one WebhookWorkflow to its end with a real worker serving it and send_webhook in this process."""

    async def go() -> WebhookResult:
        client = await Client.connect(address)
        with ThreadPoolExecutor(2, thread_name_prefix="notify") as pool:
            async with Worker(client, task_queue=settings.cpu_queue, workflows=[WebhookWorkflow],
                              activities=[NotifyActivities(settings).send_webhook], activity_executor=pool):
                return await client.execute_workflow(WebhookWorkflow.run, job, id=f"song-{uuid.uuid4().hex}-webhook",
                                                     task_queue=settings.cpu_queue)

    return asyncio.run(go())


def job_for(receiver: Receiver, settings, host: str = "127.0.0.1") -> WebhookJob:
    return WebhookJob(url=receiver.url(host), key_id="key-7", event=EVENT, task_queue=settings.cpu_queue,
                      retry_initial_s=0.2)


def test_the_workflow_retries_a_5xx_and_delivers(temporal_address, settings, receiver):
    settings = replace(settings, webhook_secret=MASTER, webhook_allow_private=True)
    receiver.statuses = [500, 503, 200]
    result = run_job(temporal_address, settings, job_for(receiver, settings, "localhost"))
    assert result == WebhookResult(status=200, attempts=3)
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:  # every attempt is signed afresh with the key's secret
        assert verify(key_secret(MASTER, "key-7"), headers[SIGNATURE_HEADER], body)
        assert headers[EVENT_ID_HEADER] == "song-1-song.completed" and json.loads(body) == EVENT


def test_the_workflow_does_not_retry_a_410_and_fails_with_its_message(temporal_address, settings, receiver):
    settings = replace(settings, webhook_secret=MASTER, webhook_allow_private=True)
    receiver.statuses = [410, 200]
    with pytest.raises(WorkflowFailureError) as e:
        run_job(temporal_address, settings, job_for(receiver, settings))
    cause = e.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "WebhookRejected"
    assert cause.message == "webhook to 127.0.0.1: answered 410, not retried (only 408, 429 and 5xx are)"
    assert len(receiver.requests) == 1


def test_the_workflow_refuses_a_loopback_receiver_without_allow_private(temporal_address, settings, receiver):
    settings = replace(settings, webhook_secret=MASTER, webhook_allow_private=False)
    job = replace(job_for(receiver, settings), url=receiver.url().replace("http://", "https://"))
    with pytest.raises(WorkflowFailureError) as e:
        run_job(temporal_address, settings, job)
    cause = e.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "WebhookRejected"
    assert "127.0.0.1 is a loopback address" in cause.message and "\n" not in cause.message
    assert receiver.requests == []


def test_the_workflow_gives_up_with_the_last_error(temporal_address, settings, receiver):
    # a day in production; a few seconds here (ample for the first attempt), the same path
    settings = replace(settings, webhook_secret=MASTER, webhook_allow_private=True)
    receiver.statuses = [503]
    with pytest.raises(WorkflowFailureError) as e:
        run_job(temporal_address, settings, replace(job_for(receiver, settings), give_up_after_s=5))
    cause = e.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "WebhookGaveUp"
    assert cause.message == ("webhook to 127.0.0.1: gave up after 5 s; last error: "
                             "webhook to 127.0.0.1: answered 503, will retry")
    assert receiver.requests


def test_a_cancelled_webhook_workflow_ends_cancelled(temporal_address, settings, receiver):
    settings = replace(settings, webhook_allow_private=True)
    receiver.statuses = [503]
    job = replace(job_for(receiver, settings), retry_initial_s=600)  # the second attempt waits: cancel meanwhile

    async def go() -> BaseException:
        client = await Client.connect(temporal_address)
        with ThreadPoolExecutor(2) as pool:
            async with Worker(client, task_queue=settings.cpu_queue, workflows=[WebhookWorkflow],
                              activities=[NotifyActivities(settings).send_webhook], activity_executor=pool):
                handle = await client.start_workflow(WebhookWorkflow.run, job, id=f"song-{uuid.uuid4().hex}-webhook",
                                                     task_queue=settings.cpu_queue)
                while not receiver.requests:
                    await asyncio.sleep(0.05)
                await handle.cancel()
                with pytest.raises(WorkflowFailureError) as e:
                    await handle.result()
                return e.value.cause

    assert isinstance(asyncio.run(go()), CancelledError)
