"""Map core exceptions to Temporal failures: what no retry can fix is non-retryable."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

from temporalio.exceptions import ApplicationError

from longsong.workflows.messages import NON_RETRYABLE_ERRORS


def worker_identity() -> str:
    """Same shape as the Temporal SDK's default worker identity: pid@host."""
    return f"{os.getpid()}@{socket.gethostname()}"


@contextmanager
def classified() -> Iterator[None]:
    """Re-raise fatal core errors as non-retryable ApplicationErrors named after their class."""
    try:
        yield
    except ApplicationError:
        raise
    except Exception as e:
        names = {c.__name__ for c in type(e).__mro__}
        fatal = names & set(NON_RETRYABLE_ERRORS)
        if fatal:
            raise ApplicationError(str(e), type=fatal.pop(), non_retryable=True) from e
        raise
