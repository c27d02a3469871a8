"""Telemetry on a real song (dev server, both workers in process): the worker's Prometheus endpoint with our
series and the SDK's, JSON log lines carrying workflow and window, spans exported over OTLP/HTTP to a real
receiver on loopback; the API's HTTP metrics on a real uvicorn server; one-line errors for a bad address."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity, workflow

from longsong import telemetry
from longsong.client import LongsongClient
from longsong.devstack import free_port
from longsong.engines.base import TransientEngineError
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.request import SongRequest
from longsong.settings import Settings, SettingsError
from longsong.storage import FileStorage
from longsong.worker import in_process
from longsong.workflows.metrics import BUCKETS, WINDOW_RTF

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


class FlakyOnce(ProceduralEngine):
    """Window 1's first attempt fails with a retryable error (like a GPU OOM), so a retry is counted."""

    def __init__(self):
        super().__init__()
        self.failed = False

    def generate(self, req, on_step):
        if req.index == 1 and not self.failed:
            self.failed = True
            raise TransientEngineError("out of memory (test)")
        return super().generate(req, on_step)


class Traces(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each POST /v1/traces body, answers with an empty export response."""

    bodies: list[bytes]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@dataclass
class Run:
    workflow_id: str
    gpu_queue: str
    metrics: list  # the endpoint's samples after the song
    logs: list[str]
    spans: list  # (trace_id, name, service.name)
    windows_generated: int  # generate_segment attempts that completed, from the history


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list, name: str, **labels: str) -> float:
    return sum(s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def decode_spans(bodies: list[bytes]) -> list:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = []
    for body in bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            out += [(s.trace_id, s.name, service) for ss in rs.scope_spans for s in ss.spans]
    return out


async def completed_generations(client, workflow_id: str) -> int:
    scheduled, done = {}, 0
    async for e in client.get_workflow_handle(workflow_id).fetch_history_events():
        if e.HasField("activity_task_scheduled_event_attributes"):
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        if e.HasField("activity_task_completed_event_attributes"):
            done += scheduled[e.activity_task_completed_event_attributes.scheduled_event_id] == "generate_segment"
    return done


@pytest.fixture(scope="module")
def song_run(temporal_address, tmp_path_factory) -> Run:
    """One 45 s song (2 windows, a retried window 1) with metrics, JSON logs and tracing all on."""
    tmp = tmp_path_factory.mktemp("telemetry")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(home=tmp / "home", gpu_queue=f"test-gpu-{tag}", cpu_queue=f"test-cpu-{tag}",
                        shutdown_grace_s=5, retry_initial_s=0.2, retry_max_s=1,
                        metrics_addr=f"127.0.0.1:{free_port()}", log_format="json")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Traces)
    receiver.bodies = []  # type: ignore[attr-defined]
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, activity.logger.activity_info_on_message,
             workflow.logger.workflow_info_on_message)
    log_path = tmp / "worker.log"

    async def main():
        async with in_process(temporal_address, settings, FileStorage(tmp / "objects"),
                              registry=EngineRegistry([FlakyOnce()]), runtime=telemetry.runtime(settings),
                              interceptors=interceptors) as client:
            lc = LongsongClient(client, settings)
            req = SongRequest(prompt="warm house groove", duration_s=45, bpm=124, key="A minor", formats=["wav"],
                              user_id="tester", seed=11)
            handle = await lc.submit(req)
            await lc.result(handle.workflow_id)
            with urllib.request.urlopen(f"http://{settings.metrics_addr}/metrics", timeout=10) as r:
                text = r.read().decode()
            return handle.workflow_id, text, await completed_generations(client, handle.workflow_id)

    try:
        with pytest.MonkeyPatch.context() as mp, open(log_path, "w") as stream:
            mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}")
            interceptors = telemetry.interceptors("test")
            with contextlib.redirect_stderr(stream):
                telemetry.setup_logging(settings, "test")
            workflow_id, text, generated = asyncio.run(main())
            telemetry.shutdown()  # exports what is buffered
    finally:
        root.handlers[:], level, activity.logger.activity_info_on_message, \
            workflow.logger.workflow_info_on_message = saved
        root.setLevel(level)
        receiver.shutdown()
    return Run(workflow_id, settings.gpu_queue, samples(text), log_path.read_text().splitlines(),
               decode_spans(receiver.bodies), generated)  # type: ignore[attr-defined]


def test_worker_endpoint_has_song_window_and_error_series(song_run):
    m, engine = song_run.metrics, {"engine": "procedural"}
    assert value(m, "longsong_songs_started_total", **engine) == 1
    assert value(m, "longsong_songs_closed_total", outcome="completed", **engine) == 1
    assert value(m, "longsong_song_latency_count", outcome="completed", **engine) == 1
    assert value(m, "longsong_song_latency_sum", outcome="completed", **engine) > 0
    assert value(m, "longsong_song_audio_total", **engine) == 45
    window = {"engine": "procedural", "model": "procedural-v1", "activity_type": "generate_segment"}
    assert song_run.windows_generated == 2
    assert value(m, "longsong_window_seconds_count", **window) == song_run.windows_generated
    assert value(m, "longsong_window_rtf_count", **window) == song_run.windows_generated
    assert value(m, "longsong_window_rtf_sum", **window) > 0
    rtf_buckets = {s.labels["le"] for s in m if s.name == "longsong_window_rtf_bucket"}
    assert rtf_buckets == {f"{b:g}" for b in BUCKETS[WINDOW_RTF]} | {"+Inf"}  # ours, not the exporter's default
    assert value(m, "longsong_activity_errors_total", activity_type="generate_segment",
                 error_type="TransientEngineError", task_queue=song_run.gpu_queue) == 1


def test_worker_endpoint_has_the_sdk_series_in_seconds(song_run):
    m, gpu = song_run.metrics, {"task_queue": song_run.gpu_queue}
    assert value(m, "temporal_request_total") > 0
    assert value(m, "temporal_activity_execution_failed_total", activity_type="generate_segment", **gpu) == 1
    # the GPU queue's backlog wait, with the buckets set for minutes-long waits
    assert value(m, "temporal_activity_schedule_to_start_latency_count", **gpu) == 3  # 2 windows, 1 retry
    assert value(m, "temporal_activity_schedule_to_start_latency_bucket", le="600", **gpu) == 3
    assert any(s.name == "temporal_worker_task_slots_available" and s.labels.get("task_queue") == song_run.gpu_queue
               for s in m)


def test_log_lines_are_json_with_workflow_and_window(song_run):
    lines = [json.loads(line) for line in song_run.logs]  # every line parses
    assert lines and all({"ts", "level", "logger", "msg", "process"} <= set(line) for line in lines)
    windows = [line for line in lines if "window" in line]
    assert sorted(line["window"] for line in windows) == [0, 1]
    for line in windows:
        assert line["workflow_id"] == song_run.workflow_id and line["activity"] == "generate_segment"
        assert line["run_id"] and line["process"] == "test" and "RTF" in line["msg"]
        assert "activity_id" not in line["msg"]  # the context is in fields, not appended to the message
    [failed] = [line for line in lines if "TransientEngineError" in line.get("exc", "")]
    assert failed["workflow_id"] == song_run.workflow_id and failed["attempt"] == 1


def test_spans_of_the_song_reach_the_otlp_receiver(song_run):
    spans = song_run.spans
    assert spans and {service for _, _, service in spans} == {"longsong-test"}
    [trace] = {t for t, name, _ in spans if name == "StartWorkflow:SongWorkflow"}
    names = {name for t, name, _ in spans if t == trace}
    assert {"RunWorkflow:SongWorkflow", "StartActivity:generate_segment", "RunActivity:generate_segment",
            "RunActivity:finish_song"} <= names


def http_app(registry: CollectorRegistry):
    from fastapi import FastAPI, HTTPException

    from longsong.service.metrics import HttpMetrics, metrics_response, reject

    app = FastAPI()
    app.add_middleware(HttpMetrics, registry=registry)

    @app.get("/v1/songs/{song_id}")
    def get_song(song_id: str):
        if song_id == "missing":
            raise HTTPException(404, "no such song")
        return {"id": song_id}

    @app.post("/v1/songs", status_code=201)
    def post_song():
        return {}

    @app.post("/v1/limited")
    def limited():
        reject("rate", registry)
        raise HTTPException(429, "slow down")

    @app.get("/v1/broken")
    def broken():
        raise RuntimeError("bug")

    @app.get("/metrics")
    def metrics():
        return metrics_response(registry)

    return app


@contextlib.contextmanager
def serving(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_http_metrics_label_route_templates_and_statuses():
    registry = CollectorRegistry()
    with serving(http_app(registry)) as base, httpx.Client(base_url=base) as http:
        for path in ("/v1/songs/abc123", "/v1/songs/def456", "/v1/songs/missing", "/nope/xyz789", "/v1/songs"):
            http.get(path)
        assert http.post("/v1/songs").status_code == 201
        assert http.post("/v1/limited").status_code == 429
        assert http.get("/v1/broken").status_code == 500
        # uvicorn closes a connection whose app raised; scrape on a fresh one as Prometheus would
        scraped = httpx.get(f"{base}/metrics")
    assert scraped.headers["content-type"].startswith("text/plain")
    m = samples(scraped.text)
    count = "longsong_http_request_seconds_count"
    song = "/v1/songs/{song_id}"
    assert value(m, count, method="GET", route=song, status="200") == 2
    assert value(m, count, method="GET", route=song, status="404") == 1
    assert value(m, count, method="GET", route="other", status="404") == 1
    assert value(m, count, method="GET", route="/v1/songs", status="405") == 1
    assert value(m, count, method="POST", route="/v1/songs", status="201") == 1
    assert value(m, count, method="POST", route="/v1/limited", status="429") == 1
    assert value(m, count, method="GET", route="/v1/broken", status="500") == 1
    assert value(m, "longsong_api_rejections_total", reason="rate") == 1
    routes = {s.labels["route"] for s in m if s.name == count}
    assert routes == {song, "other", "/v1/songs", "/v1/limited", "/v1/broken"}  # no raw ids in labels


def test_dashboard_plots_only_series_the_processes_emit(song_run):
    from prometheus_client import generate_latest

    from longsong.service.metrics import HttpMetrics, reject

    async def ok(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def ignore(message):
        pass

    registry = CollectorRegistry()
    asyncio.run(HttpMetrics(ok, registry)({"type": "http", "method": "GET"}, None, ignore))
    reject("rate", registry)
    emitted = {s.name for s in song_run.metrics} | {s.name for s in samples(generate_latest(registry).decode())}
    dashboard = json.loads((DEPLOY / "grafana/dashboards/longsong.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\b(?:longsong|temporal)_[a-z_]+", e)}
    assert len(used) > 10 and used <= emitted, used - emitted
    [source] = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} == {source["uid"]}
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    [workers] = jobs["longsong-workers"]["dns_sd_configs"]
    assert workers["port"] == 9464 and set(workers["names"]) == {"worker-gpu", "worker-cpu", "worker-gpu-next",
                                                                 "worker-cpu-next"}
    assert jobs["longsong-api"]["dns_sd_configs"][0]["port"] == 8000


def test_metrics_address_is_checked_in_one_line():
    assert telemetry.runtime(Settings(metrics_addr="")) is None
    for bad in ("localhost:9464", "0.0.0.0", "0.0.0.0:99999", ":::9464", "[127.0.0.1]:9464"):
        with pytest.raises(SettingsError, match="^LONGSONG_METRICS_ADDR=.*e.g. 0.0.0.0:9464") as err:
            telemetry.metrics_address(bad)
        assert "\n" not in str(err.value)
    assert telemetry.metrics_address(" [::1]:9464 ") == "[::1]:9464"


def test_worker_with_a_taken_metrics_port_fails_in_one_line(tmp_path):
    with contextlib.closing(__import__("socket").socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_", "OTEL_"))}
        env.update(LONGSONG_HOME=str(tmp_path), LONGSONG_METRICS_ADDR=f"127.0.0.1:{taken.getsockname()[1]}")
        run = subprocess.run([sys.executable, "-m", "worker_cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("worker_cpu: LONGSONG_METRICS_ADDR=127.0.0.1:") and "in use" in run.stderr
    assert run.stderr.strip().count("\n") == 0
