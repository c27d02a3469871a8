"""The running activity of a song (attempt, last failure, heartbeat age) merged into its progress."""

from __future__ import annotations

from datetime import datetime, timezone

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo

from longsong.workflows.messages import Progress

# A running activity silent this long shows as stalled (no ETA): heartbeats reach the server at least every
# 2 s while an engine steps (longsong.worker.HEARTBEAT_THROTTLE).
STALE_HEARTBEAT_S = 10.0


def one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _ts(stamp) -> datetime | None:
    return stamp.ToDatetime(tzinfo=timezone.utc) if stamp.seconds or stamp.nanos else None


def merge_pending(p: Progress, pending: PendingActivityInfo, now: datetime) -> Progress:
    """Add the running activity's attempt, last failure and heartbeat age to `p`; a retried or silent
    activity makes the ETA unknown (the window timings it is computed from no longer hold)."""
    p.activity = pending.activity_type.name
    p.attempt = pending.attempt or 1
    p.max_attempts = pending.maximum_attempts or None
    p.last_failure = one_line(pending.last_failure.message) if pending.HasField("last_failure") else None
    if p.activity == "generate_segment":
        p.window = p.segments_done + 1  # windows run one after another
    if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
        seen = [t for t in (_ts(pending.last_heartbeat_time), _ts(pending.last_started_time)) if t is not None]
        if seen:
            p.heartbeat_age_s = max(0.0, (now - max(seen)).total_seconds())
    p.retrying = p.attempt > 1 or p.last_failure is not None
    p.stalled = p.heartbeat_age_s is not None and p.heartbeat_age_s > STALE_HEARTBEAT_S
    if p.retrying or p.stalled:
        p.eta_s = None
    return p
