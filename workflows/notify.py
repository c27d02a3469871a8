"""WebhookWorkflow: deliver one song event to its callback URL, retried with backoff for up to a day.

A workflow of its own (the song workflow starts it as an abandoned child, id `<song_id>-webhook`) so a
receiver that is down for hours never keeps the song open. Import-light: dataclasses and temporalio only;
the signing and HTTP live in the `send_webhook` activity (longsong.activities.notify).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, is_cancelled_exception

EVENT_TYPES = ("song.completed", "song.failed", "song.cancelled")
DELIVERY_TIMEOUT = timedelta(seconds=30)  # one attempt (the HTTP timeouts are 10 s)
MAX_INTERVAL = timedelta(hours=1)


@dataclass
class WebhookJob:
    url: str
    key_id: str | None  # whose secret signs the event (None: a song submitted without an API key)
    event: dict
    task_queue: str  # the CPU task queue
    retry_initial_s: float = 5.0  # first retry interval, doubling up to an hour
    give_up_after_s: float = 86400.0  # a day of attempts, then the workflow fails with the last error


@dataclass
class WebhookResult:
    """What a delivered event got (a failed delivery fails the workflow instead, with the last error)."""

    status: int
    attempts: int


def song_event(type: str, song_id: str, user_id: str, status: str, created_at: str, duration_s: float | None = None,
               error: str | None = None, files: dict[str, str] | None = None) -> dict:
    """The event body: `type` one of EVENT_TYPES; `files` name -> object key (the link uses the key's last part)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"event type {type!r} is not one of {', '.join(EVENT_TYPES)}")
    base = f"/v1/songs/{song_id}"
    song: dict = {"id": song_id, "user_id": user_id, "status": status,
                  "links": {"self": base,
                            "files": {name: f"{base}/files/{key.rsplit('/', 1)[-1]}"
                                      for name, key in (files or {}).items()}}}
    if duration_s is not None:
        song["duration_s"] = duration_s
    if error is not None:
        song["error"] = error
    return {"id": f"{song_id}-{type}", "type": type, "created_at": created_at, "song": song}


def _last_error(err: BaseException) -> str:
    """The innermost failure's message (a timeout's cause is the last attempt's failure)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return getattr(err, "message", None) or str(err)


@workflow.defn(name="WebhookWorkflow")
class WebhookWorkflow:
    @workflow.run
    async def run(self, job: WebhookJob) -> WebhookResult:
        host = urlsplit(job.url).hostname or job.url
        try:
            return await workflow.execute_activity(
                "send_webhook", job, result_type=WebhookResult, task_queue=job.task_queue,
                start_to_close_timeout=DELIVERY_TIMEOUT,
                schedule_to_close_timeout=timedelta(seconds=job.give_up_after_s),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=job.retry_initial_s),
                                         backoff_coefficient=2.0, maximum_interval=MAX_INTERVAL,
                                         maximum_attempts=0, non_retryable_error_types=["WebhookRejected"]),
                summary=f"{job.event.get('type', 'event')} to {host}")
        except ActivityError as e:
            if is_cancelled_exception(e):
                raise  # the webhook workflow was cancelled: it ends cancelled, not failed
            # Out of time: the server either times the activity out (a timeout whose cause is the last failure)
            # or, when the next backoff would pass the deadline, fails it with the last failure itself.
            if e.retry_state == RetryState.TIMEOUT:
                span = job.give_up_after_s
                after = f"{span / 3600:g} h" if span >= 3600 else f"{span:g} s"
                raise ApplicationError(f"webhook to {host}: gave up after {after}; last error: {_last_error(e)}",
                                       type="WebhookGaveUp", non_retryable=True) from None
            cause = e.cause
            kind = cause.type if isinstance(cause, ApplicationError) and cause.type else "WebhookFailed"
            raise ApplicationError(_last_error(e), type=kind, non_retryable=True) from None
