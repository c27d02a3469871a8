"""Map core exceptions to Temporal failures: what no retry can fix is non-retryable; count each failed attempt
by error type (retries on the metrics endpoint); and the storage hook that heartbeats an activity while its
storage call waits out an outage."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from longsong.storage.base import StorageUnavailable, set_waiting_hook
from longsong.workflows.messages import NON_RETRYABLE_ERRORS
from longsong.workflows.metrics import ACTIVITY_ERRORS


def worker_identity() -> str:
    """Same shape as the Temporal SDK's default worker identity: pid@host."""
    return f"{os.getpid()}@{socket.gethostname()}"


def heartbeat_while_waiting(message: str) -> None:
    """The storage waiting hook: heartbeat the activity this thread runs (nothing outside an activity)."""
    if activity.in_activity():
        activity.heartbeat(message)


def install_storage_heartbeat() -> None:
    """Make storage calls inside activities heartbeat while they wait out an outage (idempotent). Workers
    call it before they start (longsong.worker.serve, in_process)."""
    set_waiting_hook(heartbeat_while_waiting)


def count_error(error_type: str) -> None:
    """One failed attempt of the running activity (the meter adds activity_type and task_queue)."""
    if activity.in_activity():
        activity.metric_meter().create_counter(ACTIVITY_ERRORS, "activity attempts that raised").add(
            1, {"error_type": error_type})


@contextmanager
def classified() -> Iterator[None]:
    """Re-raise fatal core errors as non-retryable ApplicationErrors named after their class. A storage outage
    that outlasted the call's whole budget (LONGSONG_STORAGE_RETRY_S) is non-retryable too: another attempt
    would wait the budget again. Its message is the root cause (nothing chained: the client shows the deepest
    cause, which would otherwise be the raw HTTP-library error). A cancelled attempt is not counted."""
    try:
        yield
    except CancelledError:
        raise
    except ApplicationError as e:
        count_error(e.type or "ApplicationError")
        raise
    except StorageUnavailable as e:
        count_error("StorageUnavailable")
        if e.budget_exhausted:
            raise ApplicationError(str(e), type="StorageUnavailable", non_retryable=True) from None
        raise
    except Exception as e:
        names = {c.__name__ for c in type(e).__mro__}
        fatal = names & set(NON_RETRYABLE_ERRORS)
        error_type = fatal.pop() if fatal else type(e).__name__
        count_error(error_type)
        if fatal:
            raise ApplicationError(str(e), type=error_type, non_retryable=True) from e
        raise
