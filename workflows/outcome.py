"""What the song workflow does once a song has ended: count it (metrics) and tell its callback URL.

The webhook is delivered by a child WebhookWorkflow that outlives the song (ParentClosePolicy.ABANDON): a
receiver that is down for hours never keeps the song open. Songs started before the service patch start
no child (their histories replay unchanged); the metrics are not commands, so every song records them.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import is_cancelled_exception
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from longsong.engines import ENGINE_NAMES
    from longsong.request import SongRequest
    from longsong.workflows.messages import SongJob, SongResult
    from longsong.workflows.metrics import song_closed, song_started
    from longsong.workflows.notify import WebhookJob, WebhookWorkflow, song_event


def engine_label(job: SongJob) -> str:
    """The engine as a metric label: an invalid request's arbitrary text never becomes a series."""
    return job.request.engine if job.request.engine in ENGINE_NAMES else "invalid"


def started(job: SongJob) -> None:
    song_started(engine_label(job))


def _cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(str(getattr(err, "message", None) or err).split()) or type(err).__name__


async def ended(job: SongJob, req: SongRequest | None, began: datetime, result: SongResult | None,
                error: BaseException | None, webhook: bool) -> None:
    """`req` is the validated request (None when validation failed: no callback is trusted then)."""
    cancelled = error is not None and is_cancelled_exception(error)
    outcome = "completed" if error is None else "cancelled" if cancelled else "failed"
    latency = (workflow.now() - began).total_seconds()
    song_closed(engine_label(job), outcome, latency, result.duration_s if result else 0.0)
    if not webhook or req is None or req.callback_url is None:
        return
    event = song_event(f"song.{outcome}", req.request_id, req.user_id,
                       "canceled" if cancelled else outcome, workflow.now().isoformat(),
                       duration_s=result.duration_s if result else None,
                       error=None if error is None or cancelled else _cause(error),
                       files=result.files if result else None)
    await workflow.start_child_workflow(
        WebhookWorkflow.run, WebhookJob(req.callback_url, job.key_id, event, job.cpu_queue),
        id=f"{req.request_id}-webhook", task_queue=job.cpu_queue, parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=f"{event['type']} of song {req.request_id}")
