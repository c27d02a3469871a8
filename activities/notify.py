"""The `send_webhook` activity: one signed delivery attempt; the WebhookWorkflow's retry policy does the rest.

Synchronous (the CPU worker runs it on its thread pool). A refusal no retry can fix (the URL policy, a 4xx)
is non-retryable; anything transient is retried with backoff for up to a day.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from longsong.settings import Settings
from longsong.webhooks import WebhookRejected, WebhookUnreachable, deliver, key_secret
from longsong.workflows.notify import WebhookJob, WebhookResult


class NotifyActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="send_webhook")
    def send_webhook(self, job: WebhookJob) -> WebhookResult:
        """POST the job's event, signed with its key's secret (derived here: it never enters history)."""
        attempt = activity.info().attempt
        secret = key_secret(self.settings.webhook_secret, job.key_id)
        try:
            status = deliver(job.url, job.event, secret, allow_private=self.settings.webhook_allow_private)
        except WebhookRejected as e:
            activity.logger.warning("%s (attempt %d, not retried)", e, attempt)
            raise ApplicationError(str(e), type="WebhookRejected", non_retryable=True) from None
        except WebhookUnreachable as e:
            activity.logger.info("%s (attempt %d)", e, attempt)
            raise ApplicationError(str(e), type="WebhookUnreachable") from None
        activity.logger.info("webhook %s delivered: %d (attempt %d)", job.event.get("id"), status, attempt)
        return WebhookResult(status=status, attempts=attempt)
