"""Map core exceptions to Temporal failures: what no retry can fix is non-retryable; and the storage hook
that heartbeats an activity while its storage call waits out an outage."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

from temporalio import activity
from temporalio.exceptions import ApplicationError

from longsong.storage.base import StorageUnavailable, set_waiting_hook
from longsong.workflows.messages import NON_RETRYABLE_ERRORS


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


@contextmanager
def classified() -> Iterator[None]:
    """Re-raise fatal core errors as non-retryable ApplicationErrors named after their class. A storage outage
    that outlasted the call's whole budget (LONGSONG_STORAGE_RETRY_S) is non-retryable too: another attempt
    would wait the budget again. Its message is the root cause (nothing chained: the client shows the deepest
    cause, which would otherwise be the raw HTTP-library error)."""
    try:
        yield
    except ApplicationError:
        raise
    except StorageUnavailable as e:
        if e.budget_exhausted:
            raise ApplicationError(str(e), type="StorageUnavailable", non_retryable=True) from None
        raise
    except Exception as e:
        names = {c.__name__ for c in type(e).__mro__}
        fatal = names & set(NON_RETRYABLE_ERRORS)
        if fatal:
            raise ApplicationError(str(e), type=fatal.pop(), non_retryable=True) from e
        raise
