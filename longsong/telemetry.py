"""Metrics, logs and traces of the long-running processes (the workers, the API), set up in one place so
every process exports the same way.

Metrics: one Prometheus endpoint per process at LONGSONG_METRICS_ADDR, served by the Temporal runtime;
the SDK's own metrics and ours (longsong.workflows.metrics: the workflow's and activities' meters) share it.
Logs: one JSON object per line (workflow and activity context from temporalio's loggers, `extra={"window": i}`
from ours), or the human format on the dev stack. Traces: OpenTelemetry spans of client calls, workflows and
activities when OTEL_EXPORTER_OTLP_ENDPOINT is set (the OTel SDK reads its OTEL_* variables itself).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from datetime import datetime, timezone

from temporalio import activity, workflow
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from longsong.settings import Settings, SettingsError
from longsong.workflows.metrics import BUCKETS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_tracing = None  # this process's TracerProvider, made on the first interceptors() call with an endpoint


def metrics_address(raw: str) -> str | None:
    """LONGSONG_METRICS_ADDR as the exporter binds it (`IP:port`, IPv6 in brackets); None when empty (off)."""
    text = raw.strip()
    if not text:
        return None
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
        valid = port.isdigit() and 1 <= int(port) <= 65535 and (ip.version == 6) == bracketed
    except ValueError:
        valid = False
    if not valid:
        raise SettingsError(f"LONGSONG_METRICS_ADDR={raw!r} is not an IP address and port (e.g. 0.0.0.0:9464, "
                            f"127.0.0.1:9464, [::]:9464; no host names), or empty for off")
    return text


def runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime serving Prometheus `/metrics` at settings.metrics_addr (None when it is empty):
    counters end in `_total`, durations are seconds; Core's warnings go through Python logging."""
    address = metrics_address(settings.metrics_addr)
    if address is None:
        return None
    try:
        return Runtime(telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                                  forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core"))),
            metrics=PrometheusConfig(bind_address=address, counters_total_suffix=True, durations_as_seconds=True,
                                     histogram_bucket_overrides=BUCKETS)))
    except ValueError as e:  # e.g. the port is taken
        raise SettingsError(f"LONGSONG_METRICS_ADDR={address}: cannot serve metrics there "
                            f"({str(e).splitlines()[0]})") from None


class JsonLines(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, process, and where known workflow_id, run_id,
    activity, attempt, window; exc when an exception is attached."""

    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(), "process": self.process}
        act = getattr(record, "temporal_activity", None)
        wf = getattr(record, "temporal_workflow", None)
        if isinstance(act, dict):
            out.update(workflow_id=act.get("workflow_id"), run_id=act.get("workflow_run_id"),
                       activity=act.get("activity_type"), attempt=act.get("attempt"))
        elif isinstance(wf, dict):
            out.update(workflow_id=wf.get("workflow_id"), run_id=wf.get("run_id"))
        window = getattr(record, "window", None)
        if window is not None:
            out["window"] = window
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(settings: Settings, process: str) -> None:
    """Root logging at INFO on stderr in settings.log_format. JSON carries the workflow and activity context
    as fields, so temporalio's loggers stop appending it to the message."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonLines(process))
        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def interceptors(process: str = "api") -> list:
    """[TracingInterceptor] exporting spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else [].
    Goes on the Client: its workers inherit it. The service name is OTEL_SERVICE_NAME or longsong-{process}."""
    global _tracing
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if _tracing is None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or f"longsong-{process}"
        _tracing = TracerProvider(resource=Resource.create({"service.name": service}))
        _tracing.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(_tracing)
    return [TracingInterceptor(_tracing.get_tracer("longsong"))]


def shutdown() -> None:
    """Export the spans still buffered and stop tracing: the workers leave with os._exit, which skips the
    OTel SDK's own flush at exit."""
    global _tracing
    if _tracing is not None:
        _tracing.shutdown()  # flushes first
        _tracing = None
