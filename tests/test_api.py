"""The HTTP API over the real stack: auth, quotas, idempotency, files with Range, SSE, webhooks, bad input."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from api_stack import api_stack

from longsong.request import InvalidRequest, SongRequest, validate
from longsong.service import keys
from longsong.webhooks import SIGNATURE_HEADER, key_secret, verify

pytestmark = pytest.mark.e2e
SONG = {"prompt": "warm house groove", "duration_s": 30, "bpm": 124, "formats": ["mp3", "wav"], "seed": 3}


@pytest.fixture(scope="module")
def stack(temporal_address, tmp_path_factory):
    with api_stack(temporal_address, tmp_path_factory.mktemp("api")) as s:
        yield s


@pytest.fixture(scope="module")
def done_song(stack):
    """A completed song of user `api-alice`: (key, song id, its view)."""
    key = stack.key("api-alice")
    with stack.http(key) as http:
        r = http.post("/v1/songs", json={**SONG, "duration_s": 45, "sections": [{"start_s": 0, "prompt": "intro"},
                                                             {"start_s": 12, "prompt": "drop"}]})
        assert r.status_code == 201, r.text
        return key, r.json()["id"], wait_done(http, r.json()["id"])


def wait_done(http: httpx.Client, song_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = http.get(f"/v1/songs/{song_id}").json()
        if view["status"] != "running":
            return view
        time.sleep(0.3)
    raise AssertionError(f"song {song_id} still running after {timeout} s")


def test_a_song_through_the_api(stack, done_song):
    key, song_id, view = done_song
    assert view["status"] == "completed" and view["error"] is None
    assert view["progress"]["stage"] == "done" and view["progress"]["windows_done"] == view["progress"]["windows_total"] > 0
    assert abs(view["result"]["duration_s"] - 45) < 0.5 and view["result"]["seams"]
    assert [s["prompt"] for s in view["result"]["sections"]] == ["intro", "drop"]
    assert set(view["files"]) >= {"mp3", "wav", "waveform", "metadata"}
    with stack.http(key) as http:
        mp3 = http.get(view["files"]["mp3"])
        assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg" and len(mp3.content) > 10000
        part = http.get(view["files"]["mp3"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == mp3.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(mp3.content)}"
        beyond = http.get(view["files"]["mp3"], headers={"Range": f"bytes={len(mp3.content) + 10}-"})
        assert beyond.status_code == 416
        assert http.get(view["files"]["waveform"]).headers["content-type"] == "image/png"
        assert http.get(view["files"]["metadata"]).json()["request"]["user_id"] == "api-alice"
        for name in ("track.ogg", "..%2F..%2Fmetadata.json", "%2E%2E", "windows"):
            r = http.get(f"/v1/songs/{song_id}/files/{name}")
            assert r.status_code == 404 and r.json()["error"], name
        assert http.get(f"/v1/songs/{song_id}/files/../../../etc/passwd").status_code == 404
        # the browser's way in: the key as a query parameter (EventSource and <audio> send no headers)
    with stack.http() as anon:
        assert anon.get(view["files"]["mp3"] + f"?key={key}").status_code == 200
        assert anon.post("/v1/songs", params={"key": key}, json=SONG).status_code == 401  # GET only


def test_files_on_s3_are_a_redirect_to_a_link_minted_now(temporal_address, tmp_path, s3_env):
    from s3_server import new_bucket_name

    with api_stack(temporal_address, tmp_path, storage=f"s3://{new_bucket_name()}/songs") as s3:
        with s3.http(s3.key("api-sam")) as http:
            song_id = http.post("/v1/songs", json={**SONG, "formats": ["mp3"]}).json()["id"]
            view = wait_done(http, song_id)
            assert view["status"] == "completed" and view["files"]["mp3"].startswith("/v1/songs/")
            first = http.get(view["files"]["mp3"])
            assert first.status_code == 307 and first.headers["cache-control"] == "no-store"
            link = first.headers["location"]
            assert link.startswith(s3_env["AWS_ENDPOINT_URL_S3"]) and "X-Amz-Signature=" in link
            assert "X-Amz-Expires=86400" in link
            mp3 = httpx.get(link)
            assert mp3.status_code == 200 and mp3.content[:3] in (b"ID3", b"\xff\xfb")
            history = s3.call(s3.client.client.get_workflow_handle(song_id).fetch_history())
            assert "X-Amz-Signature" not in history.to_json()  # links are never stored in history


def test_keys_act_as_one_user(stack, done_song):
    key, song_id, _ = done_song
    bob = stack.key("api-bob")
    with stack.http(bob) as http:
        for method, path in (("GET", f"/v1/songs/{song_id}"), ("DELETE", f"/v1/songs/{song_id}"),
                             ("GET", f"/v1/songs/{song_id}/files/track.mp3"), ("GET", f"/v1/songs/{song_id}/events"),
                             ("POST", f"/v1/songs/{song_id}/extend"), ("GET", "/v1/songs/no-such-song")):
            r = http.request(method, path, json={"duration_s": 30} if method == "POST" else None)
            assert r.status_code == 404 and r.json() == {"error": f"no song {path.split('/')[3]}", "field": None}
        assert song_id not in [s["id"] for s in http.get("/v1/songs").json()["songs"]]
    with stack.http() as anon:
        assert anon.get(f"/v1/songs/{song_id}").status_code == 401
        assert anon.get("/v1/me", headers={"Authorization": "Bearer ls_nope_nope"}).status_code == 401
        assert anon.get("/v1/me", headers={"Authorization": "Basic abc"}).status_code == 401
    revoked = stack.key("api-carol")
    with stack.http(revoked) as http:
        assert http.get("/v1/me").json()["user_id"] == "api-carol"
        keys.revoke_key(stack.db, revoked.split("_")[1])
        r = http.get("/v1/me")
        assert r.status_code == 401 and r.json()["error"] == "unknown or revoked API key"


def cli_message(**fields) -> str:
    with pytest.raises(InvalidRequest) as e:
        validate(SongRequest(**{"prompt": "ok", **fields}))
    return str(e.value)


def test_bad_bodies_start_nothing(stack):
    key = stack.key("api-dave")
    with stack.http(key) as http:
        cases = [
            (b"{not json", 400, "body is not valid JSON"),
            (b"[1, 2]", 422, "body must be a JSON object, got list"),
            (json.dumps({**SONG, "colour": "red"}).encode(), 422, "colour: unknown field; allowed: prompt,"),
            (json.dumps({**SONG, "user_id": "alice"}).encode(), 422, "user_id: unknown field"),
            (json.dumps({"prompt": "x" * 70000}).encode(), 413, "at most 65536"),
        ]
        for body, status, message in cases:
            r = http.post("/v1/songs", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status and message in r.json()["error"], (body[:40], r.text)
            assert "\n" not in r.json()["error"]
        r = http.post("/v1/songs", json={**SONG, "duration_s": 5, "bpm": "fast", "formats": ["ogg"], "key": "H"})
        assert r.status_code == 422
        errors = {e["field"]: e["message"] for e in r.json()["errors"]}
        assert errors == {"duration_s": cli_message(duration_s=5), "bpm": cli_message(bpm="fast"),
                          "key": cli_message(key="H"), "formats": cli_message(formats=["ogg"])}
        assert http.get("/v1/songs").json()["songs"] == []
        assert http.get("/v1/me").json()["usage"]["active"] == 0
        assert http.get("/v1/songs", params={"cursor": "garbage"}).status_code == 422
        assert http.get("/v1/songs", params={"limit": 0}).status_code == 422


def test_callbacks_to_private_addresses_are_refused(temporal_address, tmp_path):
    with api_stack(temporal_address, tmp_path, webhook_allow_private=False) as strict:
        with strict.http(strict.key("api-oscar")) as http:
            for url in ("https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest",
                        "https://[::1]/hook", "https://localhost/hook", "http://93.184.216.34/hook"):
                r = http.post("/v1/songs", json={**SONG, "callback_url": url})
                assert r.status_code == 422 and r.json()["field"] == "callback_url", (url, r.text)
                assert r.json()["error"].startswith("callback_url: ")
            assert http.get("/v1/songs").json()["songs"] == [] and http.get("/v1/me").json()["usage"]["active"] == 0


def test_idempotent_submits(stack):
    key = stack.key("api-erin")
    with stack.http(key) as http:
        first = http.post("/v1/songs", json=SONG, headers={"Idempotency-Key": "order-17"})
        again = http.post("/v1/songs", json=SONG, headers={"Idempotency-Key": "order-17"})
        assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
        other = http.post("/v1/songs", json={**SONG, "bpm": 90, "seed": 4}, headers={"Idempotency-Key": "order-17"})
        assert other.status_code == 409 and other.json()["fields"] == ["bpm", "seed"]
        assert "differs in: bpm, seed" in other.json()["error"]
        by_id = http.post("/v1/songs", json={**SONG, "request_id": "erin-song-1"})
        assert by_id.status_code == 201 and by_id.json()["id"] == "erin-song-1"
        assert http.post("/v1/songs", json={**SONG, "request_id": "erin-song-1"}).status_code == 200
        assert len(http.get("/v1/songs").json()["songs"]) == 2
        for song_id in (first.json()["id"], "erin-song-1"):
            wait_done(http, song_id)
    with stack.http(stack.key("api-frank")) as http:  # another user's request_id is taken, its fields not shown
        r = http.post("/v1/songs", json={**SONG, "request_id": "erin-song-1"})
        assert r.status_code == 409 and r.json()["error"] == "request_id erin-song-1 is taken; use another"


def test_concurrency_quota_is_atomic(stack):
    key = stack.key("api-gina", concurrent=5, rate_per_s=1000, burst=1000)
    with stack.http(key) as http:
        def submit(i: int) -> httpx.Response:
            return http.post("/v1/songs", json={**SONG, "duration_s": 60, "seed": i})

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(submit, range(50)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] * 5 + [429] * 45
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["retry-after"].isdigit() and "concurrent" in refused.json()["error"]
        accepted = [r.json()["id"] for r in answers if r.status_code == 201]
        for song_id in accepted:
            assert http.delete(f"/v1/songs/{song_id}").status_code in (202, 409)
        for song_id in accepted:
            assert wait_done(http, song_id)["status"] in ("canceled", "completed")
        assert http.post("/v1/songs", json=SONG).status_code == 201  # the ended songs free their places
        assert http.get("/v1/me").json()["usage"]["active"] <= 1


def test_rate_limit_and_minutes(stack):
    with stack.http(stack.key("api-hank", rate_per_s=0.5, burst=3)) as http:
        codes = [http.get("/v1/me").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = http.get("/v1/me")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]
    with stack.http(stack.key("api-ivy", daily_minutes=1)) as http:
        assert http.post("/v1/songs", json=SONG).status_code == 201
        r = http.post("/v1/songs", json={**SONG, "duration_s": 60})
        assert r.status_code == 429 and "daily" in r.json()["error"] and int(r.headers["retry-after"]) > 0
        wait_done(http, http.get("/v1/songs").json()["songs"][0]["id"])


def read_events(http: httpx.Client, path: str) -> list[tuple[str, dict]]:
    events, kind = [], None
    with http.stream("GET", path, timeout=180) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def test_events_stream_until_the_end(stack):
    key = stack.key("api-jack")
    with stack.http(key) as http:
        song_id = http.post("/v1/songs", json={**SONG, "duration_s": 60}).json()["id"]
        with ThreadPoolExecutor(3) as pool:
            streams = list(pool.map(lambda _: read_events(http, f"/v1/songs/{song_id}/events"), range(3)))
    for events in streams:
        assert events[-1][0] == "end" and events[-1][1]["status"] == "completed"
        assert events[-1][1]["result"]["duration_s"] > 59
        progress = [e for kind, e in events if kind == "progress"]
        assert all(e["id"] == song_id and e["status"] == "running" for e in progress)
    with stack.http(key) as http:  # a closed song: one `end` at once
        assert [kind for kind, _ in read_events(http, f"/v1/songs/{song_id}/events")] == ["end"]


def test_list_newest_first_with_a_cursor(stack):
    with stack.http(stack.key("api-kim")) as http:
        ids = [http.post("/v1/songs", json={**SONG, "seed": i}).json()["id"] for i in range(3)]
        page = http.get("/v1/songs", params={"limit": 2}).json()
        assert [s["id"] for s in page["songs"]] == ids[::-1][:2] and page["next_cursor"]
        rest = http.get("/v1/songs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [s["id"] for s in rest["songs"]] == [ids[0]] and rest["next_cursor"] is None
        for song_id in ids:
            wait_done(http, song_id)
        assert {s["status"] for s in http.get("/v1/songs").json()["songs"]} == {"completed"}


def test_cancel(stack):
    with stack.http(stack.key("api-lou")) as http:
        song_id = http.post("/v1/songs", json={**SONG, "duration_s": 240}).json()["id"]
        r = http.delete(f"/v1/songs/{song_id}")
        assert r.status_code == 202 and r.json() == {"id": song_id, "status": "cancelling"}
        view = wait_done(http, song_id)
        assert view["status"] == "canceled" and view["files"] == {}
        again = http.delete(f"/v1/songs/{song_id}")
        assert again.status_code == 409 and "already canceled" in again.json()["error"]
        assert http.get(f"/v1/songs/{song_id}/files/track.mp3").status_code == 404


class Receiver(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.got.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks_on_completion_and_cancel_are_signed_with_the_keys_secret(stack):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = stack.key("api-mia")
    key_id = key.split("_")[1]
    try:
        with stack.http(key) as http:
            url = f"http://127.0.0.1:{server.server_address[1]}/hook"
            song_id = http.post("/v1/songs", json={**SONG, "callback_url": url}).json()["id"]
            stopped = http.post("/v1/songs", json={**SONG, "duration_s": 240, "callback_url": url}).json()["id"]
            assert http.delete(f"/v1/songs/{stopped}").status_code == 202
            assert wait_done(http, song_id)["status"] == "completed"
            assert wait_done(http, stopped)["status"] == "canceled"
            deadline = time.monotonic() + 60
            while len(Receiver.got) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        server.shutdown()
    events = {}
    for headers, body in Receiver.got:
        assert verify(key_secret(stack.settings.webhook_secret, key_id), headers[SIGNATURE_HEADER], body)
        assert not verify(key_secret(stack.settings.webhook_secret, "other"), headers[SIGNATURE_HEADER], body)
        event = json.loads(body)
        events[event["song"]["id"]] = event
    assert events[song_id]["type"] == "song.completed" and events[song_id]["song"]["status"] == "completed"
    assert events[song_id]["song"]["links"]["files"]["mp3"] == f"/v1/songs/{song_id}/files/track.mp3"
    assert events[stopped]["type"] == "song.cancelled" and events[stopped]["song"]["status"] == "canceled"
    assert events[stopped]["song"]["links"]["files"] == {} and len(Receiver.got) == 2


def test_extend_through_the_api(stack, done_song):
    key, song_id, _ = done_song
    with stack.http(key) as http:
        bad = http.post(f"/v1/songs/{song_id}/extend", json={"duration_s": 30, "speed": 2})
        assert bad.status_code == 422 and "speed: unknown field" in bad.json()["error"]
        for body, field in (({"duration_s": "long"}, "duration_s"), ({}, "duration_s"),
                            ({"duration_s": 30, "from_s": 999}, "from_s"), ({"duration_s": 30, "seed": -4}, "seed")):
            r = http.post(f"/v1/songs/{song_id}/extend", json=body)
            assert r.status_code == 422 and r.json()["error"].startswith(field), (body, r.text)
        r = http.post(f"/v1/songs/{song_id}/regenerate", json={"from_window": 7})
        assert r.status_code == 422 and r.json()["error"].startswith("from_window"), r.text
        r = http.post(f"/v1/songs/{song_id}/extend", json={"duration_s": 30})
        assert r.status_code == 201, r.text
        view = wait_done(http, r.json()["id"])
        assert view["status"] == "completed" and view["result"]["parent_id"] == song_id
        assert view["result"]["duration_s"] > 50


def test_probes_schema_and_metrics(stack):
    from openapi_spec_validator import validate as validate_spec

    with stack.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"temporal": "ok", "storage": "ok", "database": "ok"}
        spec = http.get("/openapi.json").json()
        validate_spec(spec)
        assert "SongIn" in spec["components"]["schemas"]
        assert http.get("/docs").status_code == 200
        assert "<audio" in http.get("/").text or http.get("/").status_code == 200
        text = http.get("/metrics").text
        assert 'route="/v1/songs/{song_id}"' in text and "longsong_http_request_seconds_bucket" in text
        assert "longsong_api_rejections_total" in text


def test_song_in_matches_the_request():
    from longsong.service.intake import field_names
    from longsong.service.schemas import SongIn

    assert set(SongIn.model_fields) == field_names()
    defaults = SongRequest(prompt="x")
    for name, f in SongIn.model_fields.items():
        if name not in ("prompt", "request_id"):
            assert f.get_default(call_default_factory=True) == getattr(defaults, name), name


def readme_examples() -> list[tuple[str, str, dict | None]]:
    """(method, path, body) of each request the README's curl and JavaScript examples make."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    api = text[text.index("## HTTP API"):text.index("## The request")]
    shell = api[api.index("```bash\nKEY="):]
    shell = shell[:shell.index("```", 8)]
    out = []
    for line in shell.replace("\\\n", " ").splitlines():
        if line.startswith("curl"):
            path = re.search(r"http://127\.0\.0\.1:8000(\S+)", line).group(1).replace("/ID", "/{song_id}")
            body = re.search(r"-d '(.+)'", line)
            out.append(("POST" if "-X POST" in line else "GET", path, json.loads(body.group(1)) if body else None))
    js = api[api.index("```javascript"):]
    song = js[js.index("const song = ") + len("const song = "):js.index(";", js.index("const song = "))]
    out.append(("POST", "/v1/songs", json.loads(song)))
    out.append(("GET", "/v1/songs/{song_id}", None))
    return out


def test_readme_examples_follow_the_schema(stack):
    from jsonschema import Draft202012Validator

    with stack.http() as http:
        spec = http.get("/openapi.json").json()
    examples = readme_examples()
    assert len(examples) == 5 and sum(body is not None for _, _, body in examples) == 2
    with stack.http(stack.key("api-readme")) as http:
        for method, path, body in examples:
            route = path.replace("track.mp3", "{name}")
            assert method.lower() in spec["paths"][route], (method, route)
            if body is None:
                continue
            ref = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            Draft202012Validator({**spec, "$ref": ref}).validate(body)
            r = http.post(path, json=body)
            assert r.status_code == 201, r.text
            wait_done(http, r.json()["id"])
